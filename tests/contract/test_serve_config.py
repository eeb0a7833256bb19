"""The Ray Serve config schema: the bundled config is what ``serve deploy`` accepts, its
application args are mlgate settings, and the Gateway's ``user_config`` is live routing."""

from __future__ import annotations

from ray.serve.schema import ServeDeploySchema

from serving.launcher import DEFAULT_CONFIG, GATEWAY, app_args, read_config
from serving.ray_app import routing_config
from serving.settings import RoutingSettings, Settings


def test_the_bundled_config_is_a_serve_deploy_config_of_one_mlgate_application():
    config = read_config(DEFAULT_CONFIG)
    schema = ServeDeploySchema.model_validate(config)  # exactly what `serve deploy` checks
    (app,) = schema.applications
    assert app.import_path == "serving.ray_app:build"
    assert GATEWAY in {d.name for d in app.deployments}


def test_its_application_args_are_settings_fields():
    Settings(**app_args(read_config(DEFAULT_CONFIG)))  # extra="forbid": a typo fails here


def test_the_gateway_user_config_is_routing_per_model():
    settings = Settings(models=[{"name": "a"}, {"name": "b", "routing": {"canary": {"alias": "c", "weight": 5}}}])
    config = routing_config(settings)
    assert set(config) == {"routing"} and set(config["routing"]) == {"a", "b"}
    assert RoutingSettings(**config["routing"]["b"]).canary.weight == 5
