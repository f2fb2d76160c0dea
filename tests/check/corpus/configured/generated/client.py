from fastapi import FastAPI

app = FastAPI()


@app.post("/excluded")  # excluded by the configuration
def excluded(): ...
