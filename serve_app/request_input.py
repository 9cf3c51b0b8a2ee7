"""Turning an API request (an OpenAI body, or a gRPC GenerateRequest) into the GenerationInput
the serving path runs: the body's limits checked, the model checked, the prompt tokenized (a
chat through its template), the length limits vLLM enforces checked before anything is queued.
The async entry points (`from_http`, `from_grpc`) do this work off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from predictor_actor.text import conversation_prompt
from serve_app import limits
from serve_app import openai_protocol as oa
from serve_app.config import ServeConfig
from serve_app.generation import GenerationInput
from serve_app.proto import rankserve_pb2 as pb

logger = logging.getLogger(__name__)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

T = TypeVar("T")


def check_lengths(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """The same limits vLLM enforces, checked before anything is queued."""
    if max_tokens < 1:
        raise oa.APIError("max_tokens must be at least 1.", param="max_tokens")
    if prompt_tokens < 1:
        raise oa.APIError("The prompt is empty.", param="prompt")
    if prompt_tokens + max_tokens > max_model_len:
        raise oa.APIError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} in the completion). Please reduce the prompt or max_tokens.",
            param="max_tokens" if prompt_tokens < max_model_len else "prompt",
            code="context_length_exceeded",
        )


class RequestInputs:
    def __init__(self, config: ServeConfig, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer
        per_token = config.limits.max_chars_per_token
        if per_token is None and tokenizer is not None:
            per_token = limits.longest_token_chars(tokenizer)
        self.chars_per_token = per_token
        # One thread: a fast tokenizer used from two threads at once can fail ("Already
        # borrowed"), and one bounds the CPU that parsing takes from the ingress.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request-input")

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the input thread; anything but an APIError is logged and becomes a 500
        that says no more than that (never a traceback to the client)."""

        def guarded() -> T:
            try:
                return fn(*args)
            except oa.APIError:
                raise
            except Exception:
                logger.exception("turning a request into an input failed")
                raise oa.APIError(
                    "Internal error reading the request; the server has logged it.",
                    500,
                    "server_error",
                    code="internal_error",
                ) from None

        return await asyncio.get_running_loop().run_in_executor(self._pool, guarded)

    async def from_http(
        self,
        raw: bytes,
        body_type: type[oa._Body],
        to_input: Callable[[Any], GenerationInput],
        slo_header: str | None,
    ) -> tuple[oa._Body, GenerationInput]:
        def work() -> tuple[oa._Body, GenerationInput]:
            body = self.parse(raw, body_type)
            if body.slo is None:  # the class may come as a header instead of a body field
                body.slo = slo_header
            return body, to_input(body)

        return await self._off_loop(work)

    async def from_grpc(self, req: pb.GenerateRequest) -> GenerationInput:
        return await self._off_loop(self.grpc, req)

    def parse(self, raw: bytes, body_type: type[oa._Body]) -> oa._Body:
        data = oa.load_json(raw)
        limits.check_json(data, self.config.limits.max_json_depth)
        return oa.validate_dict(data, body_type)

    def _check_chars(self, chars: int, param: str) -> None:
        if self.chars_per_token is not None:
            limit = self.config.engine.max_model_len
            limits.check_prompt_chars(chars, limit, self.chars_per_token, param)

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise oa.model_not_found(name)

    def check_slo(self, name: str | None) -> None:
        """An SLO class the scheduler does not know is the client's error (400 /
        INVALID_ARGUMENT), named with the known ones."""
        try:
            self.config.scheduler.slo.get(name)
        except ValueError as e:
            raise oa.APIError(str(e), param="slo", code="unknown_slo_class") from None

    def _encode(self, text: str, chat: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=not chat)["input_ids"])

    def _chat_text(self, messages: list[dict[str, str]]) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as e:  # a template may refuse an odd role order
            raise oa.APIError(f"The messages cannot be rendered: {e}", param="messages") from None

    def _input(
        self,
        body: oa._Body,
        request_id: str,
        prompt_text: str,
        prompt_ids: list[int],
        max_tokens: int | None,
        default_max: int,
    ) -> GenerationInput:
        limit = self.config.engine.max_model_len
        if max_tokens is None:
            max_tokens = max(1, min(default_max, limit - len(prompt_ids)))
        check_lengths(len(prompt_ids), max_tokens, limit)
        self.check_slo(body.slo)
        return GenerationInput(
            request_id=request_id,
            prompt_text=prompt_text,
            prompt_token_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            ignore_eos=body.ignore_eos,
            slo=body.slo,
            tenant=body.tenant or body.user,
            priority_hint=body.priority,
        )

    def completion(self, body: oa.CompletionBody) -> GenerationInput:
        self.check_model(body.model)
        if isinstance(body.prompt, str):
            self._check_chars(len(body.prompt), "prompt")
            text, ids = body.prompt, self._encode(body.prompt, chat=False)
        else:
            if len(body.prompt) >= self.config.engine.max_model_len:  # before decoding them
                check_lengths(len(body.prompt), 1, self.config.engine.max_model_len)
            vocab = len(self.tokenizer)
            if any(t < 0 or t >= vocab for t in body.prompt):
                raise oa.APIError(f"Token ids must be in [0, {vocab}).", param="prompt")
            text, ids = self.tokenizer.decode(body.prompt), list(body.prompt)
        return self._input(
            body, oa.new_id("cmpl"), text, ids, body.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS
        )

    def chat(self, body: oa.ChatBody) -> GenerationInput:
        self.check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        self._check_chars(sum(len(m["content"]) for m in messages), "messages")
        ids = self._encode(self._chat_text(messages), chat=True)
        max_tokens = (
            body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens
        )
        return self._input(
            body,
            oa.new_id("chatcmpl"),
            conversation_prompt(messages),
            ids,
            max_tokens,
            self.config.default_max_tokens,
        )

    def grpc(self, req: pb.GenerateRequest) -> GenerationInput:
        self.check_model(req.model)
        fields: dict[str, Any] = {"model": req.model, "ignore_eos": req.ignore_eos}
        for name in ("max_tokens", "temperature", "top_p", "seed", "priority"):
            if req.HasField(name):
                fields[name] = getattr(req, name)
        if req.stop:
            fields["stop"] = list(req.stop)
        if req.slo:
            fields["slo"] = req.slo
        if req.tenant:
            fields["tenant"] = req.tenant
        if req.prompt and req.messages:
            raise oa.APIError("Give either prompt or messages, not both.", param="prompt")
        if req.messages:
            fields["messages"] = [{"role": m.role, "content": m.content} for m in req.messages]
            body = oa.validate_dict(fields, oa.ChatBody)
            return self.chat(body)
        if not req.prompt:
            raise oa.APIError("Give a prompt or messages.", param="prompt")
        fields["prompt"] = req.prompt
        return self.completion(oa.validate_dict(fields, oa.CompletionBody))
