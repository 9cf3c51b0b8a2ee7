"""Example gRPC client of rankserve (serve_app/proto/rankserve.proto).

python -m serve_app.grpc_client --target 127.0.0.1:9000 --prompt "def fib(n):"
python -m serve_app.grpc_client --stream --max-tokens 64 --prompt "Once upon a time"
python -m serve_app.grpc_client --health --api-key KEY   (or RANKSERVE_API_KEY=KEY)
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from serve_app.proto import rankserve_pb2 as pb
from serve_app.proto import rankserve_pb2_grpc as pb_grpc

# Ray Serve's gRPC proxy routes by this metadata key when several applications run.
APPLICATION_METADATA = (("application", "rankserve"),)


def metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    auth = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return APPLICATION_METADATA + auth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:9000")
    p.add_argument("--model", default="rankserve-tiny-llama")
    p.add_argument("--prompt", default="def fib(n):")
    p.add_argument("--chat", action="store_true", help="send the prompt as one user message")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--health", action="store_true")
    p.add_argument("--api-key", default=os.environ.get("RANKSERVE_API_KEY"))
    args = p.parse_args(argv)
    meta = metadata(args.api_key)

    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.RankServeStub(channel)
        try:
            if args.health:
                print(stub.Health(pb.HealthRequest(), metadata=meta))
                return 0
            request = pb.GenerateRequest(model=args.model, max_tokens=args.max_tokens)
            if args.chat:
                request.messages.append(pb.ChatMessage(role="user", content=args.prompt))
            else:
                request.prompt = args.prompt
            if args.stream:
                for chunk in stub.GenerateStream(request, metadata=meta):
                    print(chunk.text, end="", flush=True)
                    if chunk.finish_reason:
                        print(f"\n[finish_reason: {chunk.finish_reason}]")
            else:
                reply = stub.Generate(request, metadata=meta)
                print(reply.text)
                print(
                    f"[finish_reason: {reply.finish_reason}, "
                    f"tokens: {reply.prompt_tokens} + {reply.completion_tokens}]"
                )
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
