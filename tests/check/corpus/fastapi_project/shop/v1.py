from fastapi import FastAPI

app = FastAPI()


@app.post("/orders")  # covered: mounted on shop.main.app
def create_order_v1(): ...
