import pytest
from pydantic import ValidationError

from serving.settings import Settings


def test_defaults_serve_the_applied_repositorys_models_on_localhost_8000(tmp_path):
    s = Settings(state_dir=tmp_path)
    assert (s.http.host, s.http.port, s.http.ingress) == ("127.0.0.1", 8000, "reuseport")
    assert s.models == ()  # no model of its own: those of the applied feature repository
    assert (s.features.on_missing, s.features.on_stale) == ("default", "serve")  # never-seen: defaults
    assert s.features.repository_poll_s == 2.0
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_environment_with_prefix_and_nested_delimiter(monkeypatch):
    monkeypatch.setenv("MLGATE_HTTP__PORT", "9001")
    monkeypatch.setenv("MLGATE_MODELS", '[{"name": "m", "version": "4"}]')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u@db/mlflow")
    s = Settings()
    assert s.http.port == 9001
    assert s.models[0].uri == "models:/m/4"
    assert s.tracking_uri == "postgresql://u@db/mlflow"


def test_a_typo_fails_loudly():
    with pytest.raises(ValidationError):
        Settings(http={"prot": 1})
    with pytest.raises(ValidationError):
        Settings(modles=[])


def test_model_needs_alias_or_version_and_unique_names():
    with pytest.raises(ValidationError, match="alias or a version"):
        Settings(models=[{"name": "m", "alias": None}])
    with pytest.raises(ValidationError, match="unique"):
        Settings(models=[{"name": "m"}, {"name": "m", "alias": "challenger"}])


def test_state_dir_becomes_absolute_so_ray_workers_agree():
    assert Settings(state_dir="rel/state").state_dir.is_absolute()


def test_settings_survive_the_trip_to_a_replica(tmp_path):
    s = Settings(state_dir=tmp_path, mlflow_tracking_uri="sqlite:///x.db", http={"port": 8123})
    assert Settings(**s.model_dump(mode="json")) == s


def test_grpc_is_served_with_any_ingress_on_a_port_of_its_own():
    assert Settings().bind_hosts() == ("127.0.0.1",)  # off by default
    s = Settings(protocols={"grpc": {"enabled": True}})
    assert (s.protocols.grpc.port, s.grpc_host, s.bind_hosts()) == (8001, "127.0.0.1", ("127.0.0.1", "127.0.0.1"))
    s = Settings(http={"host": "10.0.0.5"}, protocols={"grpc": {"enabled": True, "host": "0.0.0.0"}})
    assert s.bind_hosts() == ("10.0.0.5", "0.0.0.0")
    for ingress in ("direct", "haproxy", "proxy"):  # each replica binds it itself, whatever fronts HTTP
        assert Settings(http={"ingress": ingress}, protocols={"grpc": {"enabled": True}}).protocols.grpc.enabled
    for clash in ({"http": {"port": 8001}}, {"admin": {"port": 8001}}, {"http": {"proxy_port": 8001}}):
        with pytest.raises(ValidationError, match="8001"):
            Settings(protocols={"grpc": {"enabled": True}}, **clash)
