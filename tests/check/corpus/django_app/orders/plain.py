"""A view module that imports nothing from Django: urls.py's path() makes its functions views."""

from .services import save


def submit(req):  # finding: registered with path(), branches on the method
    if req.method == "POST":
        return save(req)
    return None


def helper(req):  # not registered anywhere: not a view
    if req.method == "POST":
        return save(req)
    return None
