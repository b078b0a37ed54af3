"""The client: retries with backoff on faults, then one clear error; a 4xx at once."""
import socket

import pytest

from fake_endpoint import FakeEndpoint
from self_lengthen.client import DEFAULT_SAMPLING, Client, EndpointError, RequestRejected
from self_lengthen.errors import UsageError


def fast_client(url, **kw):
    return Client(url, retries=2, backoff=0.01, **kw)


@pytest.mark.parametrize("mode,words", [("500", "server error 500"), ("garbage", "unexpected answer")])
def test_faults_are_retried_then_one_clear_error(mode, words):
    with FakeEndpoint(mode) as fake:
        with pytest.raises(EndpointError) as err:
            fast_client(fake.base_url).chat("base", [{"role": "user", "content": "hi"}])
        assert fake.requests == 3
    assert words in str(err.value) and "3 attempts" in str(err.value)
    assert "\n" not in str(err.value)


def test_timeouts_are_retried():
    with FakeEndpoint("timeout", delay=2.0) as fake:
        with pytest.raises(EndpointError) as err:
            fast_client(fake.base_url, timeout=0.3).complete("base", "Once")
        assert fake.requests == 3
    assert "timed out" in str(err.value)


def test_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(EndpointError) as err:
        fast_client(f"http://127.0.0.1:{port}/v1").complete("base", "Once")
    assert "cannot connect" in str(err.value)
    with pytest.raises(EndpointError) as err:  # the check a stage or eval/generate.py makes before its work
        fast_client(f"http://127.0.0.1:{port}/v1").models()
    assert f"cannot reach the endpoint at http://127.0.0.1:{port}/v1" in str(err.value)


def test_models_from_an_endpoint_that_is_not_openai_compatible_or_refuses():
    with FakeEndpoint("garbage") as fake:
        with pytest.raises(EndpointError, match="unexpected answer '<html>not json"):
            fast_client(fake.base_url).models()
    with FakeEndpoint("400") as fake:
        with pytest.raises(RequestRejected, match="answered 401: a key is required"):
            fast_client(fake.base_url).models()
    with FakeEndpoint() as fake:
        assert fast_client(fake.base_url).models() == ["base"]


@pytest.mark.parametrize("url", ["notaurl", "localhost:8000/v1", "ftp://host/v1", "http://"])
def test_a_base_url_that_is_not_http_is_refused_at_once(url):
    with pytest.raises(UsageError, match="is not an http.s. URL; give one like http://HOST:8000/v1"):
        Client(url)


def test_4xx_is_not_retried():
    with FakeEndpoint("400") as fake:
        with pytest.raises(RequestRejected) as err:
            fast_client(fake.base_url).chat("x", [{"role": "user", "content": "hi"}])
        assert fake.requests == 1
    assert "400" in str(err.value) and "your model x" in str(err.value)


def test_method_sampling_defaults_are_sent_and_overridable():
    seen = []
    with FakeEndpoint(text=lambda payload: seen.append(payload) or "ok.") as fake:
        client = fast_client(fake.base_url)
        client.chat("base", [{"role": "user", "content": "hi"}])
        client.complete("base", "Once", temperature=0.0, max_tokens=5)
    assert {k: seen[0][k] for k in DEFAULT_SAMPLING} == {"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                                                         "repetition_penalty": 1.1}
    assert seen[1]["temperature"] == 0.0 and seen[1]["max_tokens"] == 5 and seen[1]["prompt"] == "Once"


def test_empty_text_is_returned_for_the_stage_to_judge():
    with FakeEndpoint("empty") as fake:
        assert fast_client(fake.base_url).chat("base", [{"role": "user", "content": "hi"}]).text == ""


def test_counts_requests_in_flight_and_tokens_received_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    seen_in_flight = []
    with FakeEndpoint(text=lambda payload: seen_in_flight.append(client.in_flight) or "four words of answer") as fake:
        client = fast_client(fake.base_url)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.complete("base", f"Once {i}"), range(32)))
    assert client.tokens_received == 32 * 4
    assert client.in_flight == 0 and len(seen_in_flight) == 32 and min(seen_in_flight) >= 1


def test_failed_requests_leave_nothing_in_flight():
    with FakeEndpoint("timeout", delay=1.0) as fake:
        client = fast_client(fake.base_url, timeout=0.2)
        with pytest.raises(EndpointError):
            client.complete("base", "Once")
    assert client.in_flight == 0 and client.tokens_received == 0
