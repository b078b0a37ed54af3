"""Numbers from the environment: each bad value is one line naming the variable and what it takes."""
import pytest

from self_lengthen.dist import barrier_timeout
from self_lengthen.env import check_environment, env_gib, env_int, env_port, env_seconds
from self_lengthen.errors import UsageError


def test_unset_or_blank_gives_the_default(monkeypatch):
    monkeypatch.delenv("X_TEST", raising=False)
    assert env_int("X_TEST", 3) == 3 and env_seconds("X_TEST", 2) == 2.0
    monkeypatch.setenv("X_TEST", "  ")
    assert env_port("X_TEST", 8000) == 8000


@pytest.mark.parametrize("read,value,message", [
    (lambda: env_int("X_TEST", 1, minimum=1), "0", "X_TEST=0 is out of range: it must be at least 1"),
    (lambda: env_int("X_TEST", 1), "1.5", "X_TEST='1.5' is not a whole number"),
    (lambda: env_port("X_TEST", 1), "65536", "X_TEST=65536 is out of range: it must be from 1 to 65535"),
    (lambda: env_seconds("X_TEST", 1), "abc", "X_TEST='abc' is not a number"),
    (lambda: env_seconds("X_TEST", 1), "-5", "X_TEST=-5 must be a positive, finite number of seconds"),
    (lambda: env_seconds("X_TEST", 1), "nan", "X_TEST=nan must be a positive"),
    (lambda: env_seconds("X_TEST", 1), "inf", "X_TEST=inf must be a positive"),
    (lambda: env_gib("X_TEST", 4), "0", "X_TEST=0 is out of range"),
])
def test_bad_values_are_named(monkeypatch, read, value, message):
    monkeypatch.setenv("X_TEST", value)
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        read()


def test_good_values_are_read(monkeypatch):
    monkeypatch.setenv("X_TEST", " 42 ")
    assert env_int("X_TEST", 1) == 42 and env_seconds("X_TEST", 1) == 42.0 and env_port("X_TEST", 1) == 42


def test_barrier_timeout_takes_the_environment_over_a_checked_profile_value(monkeypatch):
    monkeypatch.delenv("SELF_LENGTHEN_BARRIER_TIMEOUT", raising=False)
    assert barrier_timeout({"barrier_timeout": 7200}, "cpu-demo") == 7200
    assert barrier_timeout({}, "x") == 3600
    monkeypatch.setenv("SELF_LENGTHEN_BARRIER_TIMEOUT", "60")
    assert barrier_timeout({"barrier_timeout": 7200}, "cpu-demo") == 60
    for bad in (-1, 0, "soon", True, None):
        with pytest.raises(UsageError, match="profile cpu-demo: barrier_timeout="):
            barrier_timeout({"barrier_timeout": bad}, "cpu-demo")


def test_check_environment_covers_every_variable_the_project_reads(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_PORT", "SELF_LENGTHEN_API_PORT", "SELF_LENGTHEN_CONTROLLER_PORT",
                 "SELF_LENGTHEN_WORKER_PORT", "SELF_LENGTHEN_BARRIER_TIMEOUT", "SELF_LENGTHEN_HEARTBEAT_TIMEOUT",
                 "FASTCHAT_WORKER_API_TIMEOUT", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.setenv(name, "-7")
        with pytest.raises(UsageError, match=f"^{name}=-7 "):
            check_environment()
        monkeypatch.delenv(name)
    check_environment()


@pytest.mark.parametrize("name,value,message", [
    ("SELF_LENGTHEN_BASE_URL", "localhost:8000", "SELF_LENGTHEN_BASE_URL='localhost:8000' is not an http(s) URL"),
    ("NODE_ADDR", "10.0.0.1; rm", "NODE_ADDR='10.0.0.1; rm' is not an IP address or host name"),
    ("MASTER_ADDR", "http://node0", "MASTER_ADDR='http://node0' is not an IP address or host name"),
    ("SELF_LENGTHEN_API_KEY_FILE", "/nonexistent/key", "cannot read the API key file /nonexistent/key"),
])
def test_check_environment_names_a_bad_address_url_or_key_file(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_environment()


def test_good_addresses_pass(monkeypatch):
    monkeypatch.setenv("SELF_LENGTHEN_BASE_URL", "https://judge.example.com/v1")
    monkeypatch.setenv("NODE_ADDR", "node-3.cluster")
    check_environment()
    monkeypatch.setenv("NODE_ADDR", "fe80::1")
    check_environment()
