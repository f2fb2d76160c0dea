INSTALLED_APPS = ["django.contrib.contenttypes", "rest_framework", "shop"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
MIDDLEWARE += ["idempotent.contrib.django.IdempotencyMiddleware"]
