"""URLs of the statistics views: ``path("cachestrat/", include("django_cachestrat.urls"))``."""

from django.urls import path

from django_cachestrat import views

app_name = "cachestrat"

urlpatterns = [
    path("stats.json", views.stats_json, name="stats_json"),
    path("metrics", views.stats_prometheus, name="metrics"),
]
