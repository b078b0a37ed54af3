"""The cluster key (serve/auth.py): what a port does with and without it, and where the key is read from."""
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from self_lengthen.client import Client
from self_lengthen.errors import UsageError
from self_lengthen.serve.auth import protect, read_key


def app_with(key):
    app = FastAPI()

    @app.post("/anything")
    async def anything():
        return {"ok": True}

    return TestClient(protect(app, key))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                                     {"Authorization": "Bearer"}, {"Authorization": "Bearer s3cret-and-more"}])
def test_a_protected_port_refuses_a_missing_or_wrong_key_with_401(headers):
    r = app_with("s3cret").post("/anything", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "s3cret" not in r.text


def test_a_protected_port_serves_the_right_key_and_an_unprotected_one_serves_all():
    assert app_with("s3cret").post("/anything", headers={"Authorization": "Bearer s3cret"}).json() == {"ok": True}
    assert app_with(None).post("/anything").json() == {"ok": True}


def test_the_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SELF_LENGTHEN_API_KEY", raising=False)
    monkeypatch.delenv("SELF_LENGTHEN_API_KEY_FILE", raising=False)
    assert read_key() is None
    monkeypatch.setenv("SELF_LENGTHEN_API_KEY", "from-env")
    assert read_key() == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    monkeypatch.setenv("SELF_LENGTHEN_API_KEY_FILE", str(tmp_path / "key"))
    assert read_key() == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        read_key(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="cannot read the API key file"):
        read_key(str(tmp_path / "missing"))


def test_a_client_sends_the_cluster_key_unless_told_to_send_none(monkeypatch):
    monkeypatch.delenv("SELF_LENGTHEN_API_KEY_FILE", raising=False)
    monkeypatch.setenv("SELF_LENGTHEN_API_KEY", "cluster-key")
    assert Client("http://127.0.0.1:1/v1")._session().headers["Authorization"] == "Bearer cluster-key"
    assert "Authorization" not in Client("http://judge.example/v1", "")._session().headers  # a judge elsewhere
