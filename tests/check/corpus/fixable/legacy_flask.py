from flask import Flask

app = Flask(__name__)


@app.post("/legacy")
def legacy():
    return {}
