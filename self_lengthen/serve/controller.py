"""FastChat's controller, plus /list_workers so the launcher can count registered workers, and the cluster key:
with $SELF_LENGTHEN_API_KEY set, every route needs it and the controller's own calls to workers carry it.

Run: python -m self_lengthen.serve.controller --host 127.0.0.1 --port 21001
"""
import sys

import requests
import uvicorn

from .auth import auth_headers, protect, read_key


def main(argv=None):
    from fastchat.serve import controller as fc

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args, fc.controller = fc.create_controller()
    key = read_key()

    def get_worker_status(self, worker_name: str):
        """FastChat's status check of a worker (at registration and refresh), sending the key."""
        try:
            r = requests.post(worker_name + "/worker_get_status", headers=auth_headers(key), timeout=5)
        except requests.RequestException as exc:
            fc.logger.error(f"cannot get the status of {worker_name}: {exc}")
            return None
        if r.status_code != 200:
            fc.logger.error(f"cannot get the status of {worker_name}: HTTP {r.status_code}")
            return None
        return r.json()

    fc.Controller.get_worker_status = get_worker_status

    @fc.app.post("/list_workers")
    async def list_workers():
        return {name: info.model_names for name, info in fc.controller.worker_info.items()}

    uvicorn.run(protect(fc.app, key), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
