
from experiments import views  # noqa: F401

app_name = "experiments"

urlpatterns: list = [
]
