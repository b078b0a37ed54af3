"""FastChat's controller, plus /list_workers so the launcher can count registered workers.

Run: python -m self_lengthen.serve.controller --host 127.0.0.1 --port 21001
"""
import sys

import uvicorn


def main(argv=None):
    from fastchat.serve import controller as fc

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args, fc.controller = fc.create_controller()

    @fc.app.post("/list_workers")
    async def list_workers():
        return {name: info.model_names for name, info in fc.controller.worker_info.items()}

    uvicorn.run(fc.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
