"""Turning an API request (an OpenAI body, or a gRPC GenerateRequest) into the GenerationInput
the serving path runs: the model checked, the prompt tokenized (a chat through its template),
the length limits vLLM enforces checked before anything is queued."""

from __future__ import annotations

from typing import Any

from predictor_actor.text import conversation_prompt
from serve_app import openai_protocol as oa
from serve_app.config import ServeConfig
from serve_app.generation import GenerationInput
from serve_app.proto import rankserve_pb2 as pb

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


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
            text, ids = body.prompt, self._encode(body.prompt, chat=False)
        else:
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
