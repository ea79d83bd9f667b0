"""instructor over the openai SDK: structured output in its tools and JSON
schema modes, partial streaming, and its re-ask loop (a validation error
sent back as a tool message) threaded as one conversation."""
import instructor
import openai
from pydantic import BaseModel, field_validator

from conftest import ALERT, SYSTEM, base_url, one_conversation


class Triage(BaseModel):
    threat_type: str
    severity: str
    rationale: str


MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ALERT}]


def client(proxy, user, mode=instructor.Mode.TOOLS):
    raw = openai.OpenAI(base_url=base_url(proxy), api_key=proxy.keys["client"],
                        default_headers={"x-flywheel-user": user}, max_retries=0)
    return instructor.from_openai(raw, mode=mode)


def test_unary_text(proxy, user):
    answer = client(proxy, user).chat.completions.create(model="triage", messages=MESSAGES, response_model=None)
    assert answer.choices[0].message.content.startswith("Threat type: credential_access")
    one_conversation(proxy, user, 1)


def test_structured_tools_mode(proxy, user):
    triage = client(proxy, user).chat.completions.create(model="triage", messages=MESSAGES, response_model=Triage)
    assert (triage.threat_type, triage.severity) == ("credential_access", "high")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["response"]["message"]["tool_calls"][0]["function"]["name"] == "Triage"


def test_structured_json_schema_mode(proxy, user):
    triage = client(proxy, user, instructor.Mode.JSON_SCHEMA).chat.completions.create(
        model="triage", messages=MESSAGES, response_model=Triage)
    assert (triage.threat_type, triage.severity) == ("credential_access", "high")
    one_conversation(proxy, user, 1)


def test_partial_stream(proxy, user):
    partials = list(client(proxy, user).chat.completions.create_partial(
        model="triage", messages=MESSAGES, response_model=Triage))
    assert len(partials) > 1
    assert partials[-1].threat_type == "credential_access"
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["streamed"] is True


class Escalation(BaseModel):
    """Whether to escalate, with a severity the first answer gets wrong."""
    severity: str
    rationale: str

    @field_validator("severity")
    @classmethod
    def not_on_the_first_try(cls, value: str) -> str:
        ATTEMPTS.append(value)
        if len(ATTEMPTS) == 1:
            raise ValueError("state the severity again, after checking the rationale")
        return value


ATTEMPTS: list = []


def test_reask_loop_is_one_conversation(proxy, user):
    ATTEMPTS.clear()
    escalation = client(proxy, user).chat.completions.create(
        model="triage", messages=MESSAGES, response_model=Escalation, max_retries=2)
    assert len(ATTEMPTS) == 2 and escalation.severity == "high"
    conversation = one_conversation(proxy, user, 2)
    second_request = conversation["turns"][1]["request"]["messages"]
    assert any(m["role"] == "tool" for m in second_request)
