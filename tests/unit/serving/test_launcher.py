import pytest
from ray.serve.schema import ServeDeploySchema

from serving import launcher
from serving.auth.authenticator import check_exposure
from serving.errors import UsageError
from serving.launcher import (
    app_args,
    metrics_dir,
    ray_environment,
    read_config,
    resolved_config,
    usable_cpus,
)
from serving.settings import Settings


def test_bundled_config_is_a_valid_ray_serve_config():
    config = read_config()
    ServeDeploySchema.model_validate(config)  # exactly what `serve deploy` checks
    app = config["applications"][0]
    assert app["import_path"] == "serving.ray_app:build"
    assert app_args(config) == {}


def test_direct_ingress_puts_the_gateway_on_the_public_port_and_the_proxy_aside(tmp_path):
    settings = Settings(state_dir=tmp_path, http={"port": 9100, "proxy_port": 9200, "ingress": "direct"})
    env = ray_environment(settings)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9100"
    resolved = resolved_config(read_config(), settings)
    assert resolved["http_options"]["port"] == 9200
    assert Settings(**resolved["applications"][0]["args"]) == settings
    ServeDeploySchema.model_validate(resolved)


def test_proxy_ingress_puts_rays_proxy_on_the_public_port(tmp_path):
    settings = Settings(state_dir=tmp_path, http={"port": 9100, "ingress": "proxy"})
    assert ray_environment(settings) == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                         "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    assert resolved_config(read_config(), settings)["http_options"]["port"] == 9100


def test_haproxy_ingress_takes_the_public_port_and_one_gateway_replica_per_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr("serving.launcher.usable_cpus", lambda: 3)
    settings = Settings(state_dir=tmp_path, http={"port": 9100, "ingress": "haproxy"})
    env = ray_environment(settings)
    assert (env["RAY_SERVE_ENABLE_HA_PROXY"], env["RAY_SERVE_ENABLE_DIRECT_INGRESS"]) == ("1", "1")
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9101"  # replicas above HAProxy's port
    resolved = resolved_config(read_config(), settings)
    assert resolved["http_options"]["port"] == 9100
    gateway = next(d for d in resolved["applications"][0]["deployments"] if d["name"] == "Gateway")
    assert gateway["num_replicas"] == 3 and "autoscaling_config" not in gateway
    assert gateway["ray_actor_options"]["num_cpus"] == 0.5
    ServeDeploySchema.model_validate(resolved)

    explicit = Settings(state_dir=tmp_path, http={"ingress": "haproxy", "replicas": 2})
    gateway = next(d for d in resolved_config(read_config(), explicit)["applications"][0]["deployments"]
                   if d["name"] == "Gateway")
    assert gateway["num_replicas"] == 2


def test_direct_ingress_keeps_the_config_files_replicas_unless_told(tmp_path):
    config = read_config()
    untouched = resolved_config(config, Settings(state_dir=tmp_path, http={"ingress": "direct"}))
    assert untouched["applications"][0]["deployments"] == config["applications"][0]["deployments"]


def test_reuseport_ingress_keeps_ray_out_of_the_http_path(tmp_path, monkeypatch):
    monkeypatch.setattr("serving.launcher.usable_cpus", lambda: 2)
    settings = Settings(state_dir=tmp_path, http={"port": 9100, "proxy_port": 9200, "ingress": "reuseport"})
    assert ray_environment(settings)["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    resolved = resolved_config(read_config(), settings)
    assert resolved["http_options"]["port"] == 9200  # the replicas' own servers take 9100
    gateway = next(d for d in resolved["applications"][0]["deployments"] if d["name"] == "Gateway")
    assert gateway["num_replicas"] == 2 and "autoscaling_config" not in gateway
    ServeDeploySchema.model_validate(resolved)
    assert Settings(state_dir=tmp_path).http.ingress == "reuseport"  # the default


def test_every_replica_writes_metrics_where_any_replica_can_render_them(tmp_path):
    settings = Settings(state_dir=tmp_path)
    app = resolved_config(read_config(), settings)["applications"][0]
    assert app["runtime_env"]["env_vars"]["PROMETHEUS_MULTIPROC_DIR"] == str(metrics_dir(settings))
    assert metrics_dir(settings).is_relative_to(tmp_path.resolve())
    direct = Settings(state_dir=tmp_path, http={"ingress": "direct"})  # one replica per port
    assert "runtime_env" not in resolved_config(read_config(), direct)["applications"][0]


def test_usable_cpus_honours_a_container_quota(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs
    assert usable_cpus(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == 64
    assert usable_cpus(tmp_path / "absent") == 64


def test_secrets_reach_the_replicas_but_never_the_serve_config(monkeypatch):
    """The Serve config's args carry neither a secret nor JSON's mask of it (a replica rebuilding
    its settings from the mask failed validation, or sent the mask as the Redis password); the
    application builder reads them from the environment and hands them on as SecretStr."""
    from serving.ray_app import build

    token, password, scores_password = "t0ken-of-the-admin-123", "redis-pw-1", "scores-pw-2"
    monkeypatch.setenv("MLGATE_ADMIN__TOKEN", token)
    monkeypatch.setenv("MLGATE_REDIS__PASSWORD", password)
    settings = Settings(fallback={"redis": {"url": "redis://scores:6379/0", "password": scores_password}})
    args = resolved_config(read_config(), settings)["applications"][0]["args"]
    text = repr(args)
    assert token not in text and password not in text and scores_password not in text
    assert "**" not in text and "password" not in args["redis"] and "token" not in args["admin"]

    monkeypatch.setenv("MLGATE_FALLBACK__REDIS__PASSWORD", scores_password)  # as a Secret would
    bound = build(args)._bound_deployment.init_args[0]
    assert bound["admin"]["token"].get_secret_value() == token
    assert bound["redis"]["password"].get_secret_value() == password
    assert bound["fallback"]["redis"]["password"].get_secret_value() == scores_password
    replica = Settings(**bound)  # what the Gateway replica builds
    assert replica.admin.token.get_secret_value() == token
    assert replica.redis.password.get_secret_value() == password


def test_serve_refuses_a_public_grpc_port_without_credentials_before_starting_ray(tmp_path):
    settings = Settings(state_dir=tmp_path, protocols={"grpc": {"enabled": True, "host": "0.0.0.0"}})
    with pytest.raises(UsageError, match="0.0.0.0"):
        launcher.serve_forever(settings, launcher.read_config())
    public = Settings(state_dir=tmp_path, auth={"insecure": True}, protocols={"grpc": {"enabled": True,
                                                                                     "host": "0.0.0.0"}})
    for host in public.bind_hosts():  # told insecure: both addresses pass
        check_exposure(host, public.auth)
