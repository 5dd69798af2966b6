"""Changes made by another process (``manage.py``) reach a running ``manage.py serve`` within the poll
interval, on the embedded default too: new keys work, disabled keys stop, and their sockets close."""

import json
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import make_provider
from tests.helpers import manage, within
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.django_db(transaction=True)

POLL = 0.5


def test_a_key_made_and_disabled_from_the_shell_takes_effect_in_the_server(upstream):
    make_provider(upstream)
    with ServeProcess(SLUICE_CONFIG_POLL_SECONDS=str(POLL)) as server:
        client = httpx.Client(base_url=server.url, timeout=20)
        manage(
            server.env, "createapikey", "--name", "existing", "--user", "ops", "--create-user"
        )  # the server loads the key table
        bogus = {"authorization": "Bearer sk-sluice-not-a-key"}
        assert client.post("/v1/responses", json={"model": "gpt-5.5"}, headers=bogus).status_code == 401

        raw = manage(server.env, "createapikey", "--name", "fresh", "--user", "ops").strip().splitlines()[-1]
        headers = {"authorization": f"Bearer {raw}"}

        def works() -> bool:
            return client.post("/v1/responses", json={"model": "gpt-5.5"}, headers=headers).status_code == 200

        within(POLL + 2, works)
        sock = connect(server.url.replace("http://", "ws://") + "/v1/responses", additional_headers=headers)
        sock.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
        while json.loads(sock.recv(timeout=10))["type"] != "response.completed":
            pass

        code = "from proxy.models import ApiKey as K\nk = K.objects.get(name='fresh')\n"
        code += "k.enabled = False\nk.save()"
        manage(server.env, "shell", "-c", code)
        started = time.monotonic()
        frames = []
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(json.loads(sock.recv(timeout=POLL + 3)))
        closed_after = time.monotonic() - started
        assert sock.close_code == 1008 and frames[-1]["error"]["code"] == "invalid_api_key"
        assert closed_after < POLL + 2
        # With Redis the socket closes at once (the shell's signal crosses the channel layer); the key
        # table itself is reloaded within the poll interval.
        within(POLL + 2, lambda: not works())
        assert client.post("/v1/responses", json={"model": "gpt-5.5"}, headers=headers).status_code == 401
        client.close()
