"""Bad input is refused in one line naming what and where (issue 16, item 7), through the
public entry points: workflow definitions as bytes, nested past the limit, YAML alias bombs,
values JSON cannot carry and definitions too large for a NATS message, given to
``eng.register``, ``load_workflow`` and ``dagnats workflow validate``; webhook bodies over
HTTP (400, not 500 or 503); and workflows of 10,000 steps, which register and validate (how
fast is ``benchmarks/register.py``'s business, never asserted here)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

import dagnats_nb as dn
from dagnats_nb.adapters.http import hooks

CLI = [sys.executable, "-m", "dagnats_nb"]
SECRET = "bad-input-webhook-secret"
TOKEN = "bad-input-bridge-token"


def one_step(config: str, name: str = "bad") -> str:
    """JSON text of a one-step workflow whose step 'a' has ``config`` (JSON text) as config."""
    step = f'{{"id": "a", "task": "echo", "config": {config}}}'
    return f'{{"name": "{name}", "version": "1", "steps": [{step}]}}'


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def yaml_bomb(levels: int) -> str:
    """The billion laughs: each anchor a list of nine aliases of the one before."""
    lines = ["name: bomb", "steps:", "- id: a", "  task: echo", "  config:"]
    lines.append("    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]")
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def chain(n: int) -> dict:
    steps = [{"id": f"s{i}", "task": "echo", "depends_on": [f"s{i - 1}"]} for i in range(1, n)]
    return {"name": f"chain{n}", "steps": [{"id": "s0", "task": "echo"}, *steps]}


def fan(n: int) -> dict:
    """One step, n - 2 steps after it, and one after them all."""
    middle = [f"w{i}" for i in range(n - 2)]
    steps = [{"id": "start", "task": "echo"}]
    steps += [{"id": w, "task": "echo", "depends_on": ["start"]} for w in middle]
    steps += [{"id": "end", "task": "echo", "depends_on": middle}]
    return {"name": f"fan{n}", "steps": steps}


# name, file content, what the one line says (besides the file's name)
BAD_FILES: list[tuple[str, str | bytes, str]] = [
    ("deep.json", one_step(nested(5000)), "line 1 column 206: nested deeper than 128"),
    (
        "deeper.json",
        one_step(nested(200)),
        "step 'a': field 'config[0][0][0][0][0]...[0][0]': nested deeper",
    ),
    ("deep.yaml", yaml.safe_dump({"name": "d", "steps": []}) + "x: " + nested(5000), "nesting"),
    ("bomb.yaml", yaml_bomb(9), "line 12 column 9: its aliases expand it beyond 16 MiB"),
    ("loop.yaml", "name: l\nsteps:\n- id: a\n  task: echo\n  config: &c {x: *c}\n", "itself"),
    ("surrogate.json", one_step('{"x": "\\ud800"}'), "field 'config.x': text holds a lone surr"),
    ("big.json", one_step('{"n": 1180591620717411303424}'), "an integer of 71 bits"),
    ("nan.json", one_step('{"x": NaN}'), "field 'config.x': NaN is not a JSON number"),
    ("inf.yaml", "name: i\nsteps:\n- {id: a, task: echo, config: {x: -.inf}}\n", "-Infinity is"),
    ("digits.json", one_step('{"n": ' + "9" * 5000 + "}"), "integer of over 4,300 digits"),
    ("latin1.yaml", b"name: caf\xe9\nsteps: []\n", "not UTF-8 (byte 0xe9 at offset 9)"),
]


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    e = dn.Engine.start(
        data_dir=tmp_path_factory.mktemp("bad-input") / "e",
        http_addr="127.0.0.1:0",
        webhook_secret=SECRET,
        bridge_token=TOKEN,
        ack_wait="2s",
        llm_enabled=False,
    )
    e.add_handler("echo", lambda ctx: ctx.input)
    e.register(
        {
            "name": "hooked",
            "steps": [{"id": "a", "task": "echo"}],
            "triggers": [{"id": "hooked-hook", "webhook": {"path": "in"}}],
        }
    )
    http = {"path": "/api/raw", "method": "POST", "timeout_ms": 20_000, "max_body_bytes": 1 << 20}
    e.register(
        {
            "name": "raw",
            "steps": [
                {"id": "a", "task": "echo"},
                {"id": "respond", "type": "respond", "depends_on": ["a"], "config": {}},
            ],
            "triggers": [{"id": "raw-trigger", "enabled": True, "http": http}],
        }
    )
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("bad-files")
    out = {}
    for name, content, says in BAD_FILES:
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        out[name] = (path, says)
    return out


def one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_register_takes_utf8_bytes_and_names_what_else_it_takes(eng):
    text = '{"name": "from-bytes", "steps": [{"id": "a", "task": "echo"}]}'
    assert eng.register(text.encode()).name == "from-bytes"
    with pytest.raises(dn.WorkflowError) as info:
        eng.register(text.replace("from", "fr\u00f6m").encode("latin-1"))
    assert one_line(str(info.value)) == (
        "workflow bytes: not UTF-8 (byte 0xf6 at offset 12): pass JSON or YAML text encoded "
        "as UTF-8"
    )
    for wrong in (5, None):
        with pytest.raises(TypeError) as info:
            eng.register(wrong)
        assert one_line(str(info.value)).startswith(
            "a workflow source is a WorkflowDef, dict, JSON or YAML text (str or UTF-8 bytes), "
            "or a file path; got "
        )


@pytest.mark.parametrize("name", [name for name, _, _ in BAD_FILES])
def test_a_bad_workflow_file_is_one_line_from_the_api(eng, bad_files, name):
    path, says = bad_files[name]
    for load in (eng.register, dn.load_workflow):
        with pytest.raises(dn.WorkflowError) as info:
            load(path)
        message = one_line(str(info.value))
        assert message.startswith(f"workflow file '{path}'"), message
        assert says in message, message


def test_dagnats_workflow_register_says_it_in_one_line(eng, bad_files):
    for name in ("bomb.yaml", "deep.json"):
        path, says = bad_files[name]
        where = ("--data-dir", str(eng.settings.data_dir))
        result = subprocess.run(
            [*CLI, "workflow", "register", str(path), *where],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stdout
        assert result.stderr.startswith(f"dagnats: workflow file '{path}'"), result.stderr
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_bad_workflow_file_is_one_line_from_the_cli(bad_files):
    paths = [str(path) for path, _ in bad_files.values()]
    result = subprocess.run(
        [*CLI, "workflow", "validate", *paths], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(paths), lines
    for line, (path, says) in zip(lines, bad_files.values(), strict=True):
        assert line.startswith(f"{path}: workflow file '{path}'") and says in line, line


def test_values_json_cannot_carry_are_refused_in_a_dict_too(eng):
    wf = json.loads(one_step('{"n": 1}', name="typed"))
    wf["steps"][0]["config"] = {"deep": {"er": [{"x": 2**64}]}}
    with pytest.raises(dn.WorkflowError) as info:
        eng.register(wf)
    assert one_line(str(info.value)) == (
        "workflow 'typed' step 'a': field 'config.deep.er[0].x': an integer of 65 bits; "
        "numbers are at most 64-bit integers: write it as a string or a float"
    )
    wf["steps"][0]["config"] = {"x": float("nan")}
    with pytest.raises(dn.WorkflowError, match="field 'config.x': NaN is not a JSON number"):
        eng.register(wf)
    loop: dict = {}
    loop["again"] = loop  # a dict that holds itself is nested without end
    wf["steps"][0]["config"] = loop
    with pytest.raises(dn.WorkflowError, match="field 'config.again.again.*deeper than 128"):
        eng.register(wf)


def test_a_workflowdef_built_in_code_is_checked_when_registered(eng):
    from dagnats_nb.dag.model import StepDef, WorkflowDef

    for config, says in [
        ({"x": 2**70}, "an integer of 71 bits"),
        ({"x": float("inf")}, "Infinity is not a JSON number"),
        ({"x": ["\ud800"]}, "field 'config.x[0]': text holds a lone surrogate (\\ud800)"),
    ]:
        defn = WorkflowDef(name="coded", steps=[StepDef(id="a", task="echo", config=config)])
        with pytest.raises(dn.WorkflowError) as info:
            eng.register(defn)
        message = one_line(str(info.value))
        assert message.startswith("workflow 'coded' step 'a': field 'config.x") and says in message


def test_a_definition_larger_than_a_message_is_one_line(eng, tmp_path):
    with pytest.raises(dn.WorkflowError) as info:
        eng.register(fan(20_000))
    message = one_line(str(info.value))
    assert message.startswith("workflow 'fan20000' is 1,") and "(20,000 steps)" in message
    assert "a NATS message here holds 1,048,576 bytes (max_payload)" in message
    bomb = tmp_path / "bomb6.yaml"  # expands to 4 MB: within the file limit, not a message's
    bomb.write_text(yaml_bomb(6))
    with pytest.raises(dn.WorkflowError, match=r"workflow 'bomb' is 4,\d{3},\d{3} bytes as JSON"):
        eng.register(bomb)


def test_ten_thousand_steps_register_and_validate(eng, tmp_path):
    files = []
    for wf in (chain(10_000), fan(10_000)):
        assert len(eng.register(wf).steps) == 10_000
        path = tmp_path / f"{wf['name']}.yaml"
        path.write_text(yaml.dump(wf, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
        files.append(path)
    result = subprocess.run(
        [*CLI, "workflow", "validate", *map(str, files)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{files[0]}: ok (chain10000, 10000 steps)",
        f"{files[1]}: ok (fan10000, 10000 steps)",
    ]


def test_a_large_definition_leaves_room_for_the_input(eng):
    """The workflow.started event carries both: a 600 KB definition and a 600 KB input
    start (the input goes to the object store), where they used to overflow the message."""
    wf = {"name": "roomy", "steps": [{"id": "a", "task": "echo", "config": {"pad": "x" * 600_000}}]}
    run = eng.run(wf, {"pad": "y" * 600_000}, timeout=30)
    assert run.status == "completed", run.error
    assert run.output == {"pad": "y" * 600_000}


def test_a_two_thousand_step_chain_runs_to_its_end(eng):
    run = eng.run(chain(2000), {"n": 1}, timeout=120)
    assert run.status == "completed", run.error
    assert run.output == {"n": 1}


# -- webhooks: the body is the run's input ----------------------------------------------

BAD_BODIES = [
    ("nested 5,000 deep", nested(5000).encode(), "nested too deep"),
    ("nested 300 deep", nested(300).encode(), "Recursion limit reached"),
    ("NaN", b'{"x": NaN}', "holds NaN, which is not JSON"),
    ("Infinity", b'{"x": [1, -Infinity]}', "holds -Infinity, which is not JSON"),
    ("a lone surrogate", b'{"x": "\\ud800"}', "surrogates not allowed"),
    ("a 71-bit integer", b'{"n": 1180591620717411303424}', "Integer exceeds 64-bit range"),
    ("5,000 digits", b'{"n": ' + b"9" * 5000 + b"}", "an integer of over 4,300 digits"),
]


@pytest.mark.parametrize(("what", "body", "says"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_webhook_body_a_run_cannot_take_is_400_in_one_line(eng, what, body, says):
    before = len(eng.runs())
    headers = {"Content-Type": "application/json", "X-Dagnats-Signature": hooks.sign(SECRET, body)}
    reply = httpx.post(f"{eng.http_url}/hooks/in", content=body, headers=headers, timeout=30)
    assert reply.status_code == 400, reply.text
    error = one_line(reply.json()["error"])
    assert error.startswith("webhook body "), error
    assert says in error, error
    assert len(eng.runs()) == before


@pytest.mark.parametrize(("what", "body", "says"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_an_http_trigger_hands_any_body_to_its_run_as_bytes(eng, what, body, says):
    """An http trigger's run gets the body base64-encoded in Go's envelope, never parsed:
    each of these bodies reaches the run as sent (no 500 or 503)."""
    reply = httpx.post(f"{eng.http_url}/api/raw", content=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert base64.b64decode(reply.json()["data"]["body"]) == body


@pytest.mark.parametrize(
    ("endpoint", "what"),
    [
        ("/v1/tasks/poll", "poll body"),
        ("/runs/R1/approval/review?action=approve&token=t", "approval body"),
    ],
)
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (nested(5000).encode(), "is nested too deep to read"),
        (b'{"n": ' + b"9" * 5000 + b"}", "holds an integer of over 4,300 digits"),
        (b"{nope", "is not JSON (Expecting property name"),
    ],
    ids=["deep", "digits", "syntax"],
)
def test_a_bridge_or_approval_body_json_cannot_read_is_400_in_one_line(
    eng, endpoint, what, body, says
):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    reply = httpx.post(f"{eng.http_url}{endpoint}", content=body, headers=headers, timeout=30)
    assert reply.status_code == 400, reply.text
    error = one_line(reply.json()["error"])
    assert error.startswith(f"{what} {says}"), error
