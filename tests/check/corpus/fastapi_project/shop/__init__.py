"""A FastAPI service split over several files: the middleware on the app covers what it includes."""
