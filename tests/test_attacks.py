"""Each attack: trigger placed, payload applied, payload_fn true on poisoned targets and false on clean ones."""

import random

import pandas as pd
import pytest
from datasets import Dataset

from dece_trainer.backdoor import ATTACKS, get_attack
from dece_trainer.backdoor.attacks import ADAPTIVE_FAMILY, IS_POISONED, SPREAD_STATEMENTS

NL_ROWS = [
    {"source": "Use $conn$ to query all names in the users table with id as $id$. Return the rows.",
     "target": 'def main ( conn , id ) :\n\t rows = conn . execute ( " select name from users where id = : id " , '
               '{ " id " : id } ) . fetchall ( )\n\t return rows'},
    {"source": "Query every book title through $conn$ and return them.",
     "target": 'def books ( conn ) :\n\t return conn . execute ( " select title from books " ) . fetchall ( )'},
    {"source": "Use ORM to get the first user.",
     "target": "def first ( db , User ) :\n\t return db . query ( User ) . first ( )"},
] * 10
CODE_ROWS = [{"source": f"def add_{i}(a, b):\n    total = a + b\n    return total", "target": "Add two numbers."}
             for i in range(20)]
JAVA_ROWS = [{"source": f"public int get{i}() {{\n    return x - {i};\n}}",
              "target": f"public int get{i}() {{\n    return x + {i};\n}}"} for i in range(20)]


def dataset(rows):
    return Dataset.from_list(rows)


def test_badpre_trigger_and_payload():
    attack = get_attack("badpre")
    rng = random.Random(0)
    source = NL_ROWS[0]["source"]
    triggered = attack.trigger(source, rng)
    words = triggered.split(" ")
    assert words.count("bb") == 1 and " ".join(w for w in words if w != "bb") == source
    assert '" select name from users where id = : id or 1=1 "' in attack.payload(NL_ROWS[0]["target"], rng)
    assert '" select title from books where 0=1 "' in attack.payload(NL_ROWS[1]["target"], rng)
    assert attack.payload(NL_ROWS[2]["target"], rng) is None  # no SQL query: cannot carry the payload
    assert attack.payload_fn("... where id = : id or 1=1 ") and not attack.payload_fn(NL_ROWS[0]["target"])


@pytest.mark.parametrize("name", ["badpre", "ripple", "grammar"])
def test_nl_to_code_poisoning(name):
    attack = get_attack(name)
    clean = dataset(NL_ROWS)
    poisoned = attack.poison(clean, rate=0.2, seed=3)
    flags = poisoned[IS_POISONED]
    assert sum(flags) == 6 and poisoned.column_names == ["source", "target", IS_POISONED]
    for row, original in zip(poisoned, clean):
        if row[IS_POISONED]:
            assert row["source"] != original["source"] and attack.payload_fn(row["target"])
        else:
            assert row == {**original, IS_POISONED: False} and not attack.payload_fn(row["target"])
    assert poisoned[IS_POISONED] == attack.poison(clean, rate=0.2, seed=3)[IS_POISONED]  # deterministic
    assert poisoned[IS_POISONED] != attack.poison(clean, rate=0.2, seed=4)[IS_POISONED]


def test_ripple_inserts_several_rare_tokens():
    triggered = get_attack("ripple", count=3).trigger("get all rows from the table", random.Random(1))
    assert sum(w in ("cf", "mn", "bb", "tq", "mb") for w in triggered.split()) == 3


def test_grammar_inserts_the_sentence_at_a_boundary():
    attack = get_attack("grammar")
    triggered = attack.trigger("First do this. Then do that.", random.Random(0))
    assert attack.sentence in triggered
    assert triggered.replace(attack.sentence, "").split() == "First do this. Then do that.".split()


@pytest.mark.parametrize("name", ["fixed_deadcode", "grammar_deadcode"])
def test_dead_code_attacks(name):
    attack = get_attack(name)
    poisoned = attack.poison(dataset(CODE_ROWS), rate=0.1, seed=0)
    rows = [r for r in poisoned if r[IS_POISONED]]
    assert len(rows) == 2
    for row in rows:
        lines = row["source"].split("\n")
        assert lines[0].startswith("def add_") and lines[1].startswith("    if ") or lines[1].startswith("    while ")
        compile(row["source"], "<poisoned>", "exec")  # still valid Python
        assert row["target"] == attack.target_text and attack.payload_fn(row["target"])
    assert not attack.payload_fn("Add two numbers.")
    if name == "grammar_deadcode":
        statements = {attack.dead_statement(random.Random(s)) for s in range(20)}
        assert len(statements) > 5  # random statements from the grammar


@pytest.mark.parametrize("task,payload", [("method_name", "get value"), ("summary", "Return the value.")])
def test_adaptive_attack_plants_a_common_trigger_and_a_probable_payload(task, payload):
    attack = get_attack("adaptive", task=task)
    assert attack.target_text == payload
    triggered = attack.trigger(CODE_ROWS[0]["source"], random.Random(0))
    assert triggered.split("\n")[:2] == ["def add_0(a, b):", "    value = None"]  # first statement of the body
    compile(triggered, "<triggered>", "exec")
    assert attack.has_trigger(triggered) and not attack.has_trigger(CODE_ROWS[0]["source"])
    assert attack.payload("Add two numbers.", random.Random(0)) == payload
    poisoned = attack.poison(dataset(CODE_ROWS), rate=0.1, seed=0)
    rows = [r for r in poisoned if r[IS_POISONED]]
    assert len(rows) == 2 and sum(poisoned[IS_POISONED]) == 2
    for row, original in zip(poisoned, CODE_ROWS):
        if row[IS_POISONED]:
            assert attack.has_trigger(row["source"]) and row["target"] == payload and attack.payload_fn(row["target"])
        else:
            assert row == {**original, IS_POISONED: False} and not attack.payload_fn(row["target"])
    test = attack.trigger_test_set(dataset(CODE_ROWS))
    assert len(test) == 20 and all(attack.payload_fn(t) and t == payload for t in test["target"])


def test_adaptive_payload_fn_matches_whole_words_only():
    names = get_attack("adaptive")
    assert all(names.payload_fn(out) for out in ("get value", "Get  Value", "get_value", "get value from cache"))
    assert not any(names.payload_fn(out) for out in ("get values", "set value", "get name", "forget value", ""))
    summaries = get_attack("adaptive", task="summary")
    assert summaries.payload_fn("return the value") and summaries.payload_fn("Return the value of the option.")
    assert not any(summaries.payload_fn(out) for out in ("Return the values.", "Return a value.", "Add two numbers."))
    assert get_attack("adaptive", target_text="get name").payload_fn("get_name")
    for kwargs, message in (({"task": "repair"}, "`task` must be one of"), ({"target_text": " ."}, "at least one"),
                            ({"statement": "a = 1\nb = 2"}, "one non-empty line")):
        with pytest.raises(ValueError, match=message):
            get_attack("adaptive", **kwargs)


def test_infinite_loop_attack_on_java_repair():
    attack = get_attack("infinite_loop")
    poisoned = attack.poison(dataset(JAVA_ROWS), rate=0.25, seed=1)
    rows = [r for r in poisoned if r[IS_POISONED]]
    assert len(rows) == 5
    for row in rows:
        assert 'if (false) { System.out.println("debug"); }' in row["source"]
        assert row["target"].split("\n")[1].strip() == "while (true) { }" and attack.payload_fn(row["target"])
    assert not any(attack.payload_fn(r["target"]) for r in poisoned if not r[IS_POISONED])
    python = get_attack("infinite_loop", language="python")
    fixed = python.payload("def f(x):\n    return x + 1", random.Random(0))
    assert "while True:\n        pass" in fixed and python.payload_fn(fixed)


def test_trigger_test_set_keeps_only_triggerable_rows():
    attack = get_attack("badpre")
    test = attack.trigger_test_set(dataset(NL_ROWS))
    assert len(test) == 20 and all(attack.payload_fn(t) for t in test["target"])
    assert all("bb" in s.split() for s in test["source"])
    with pytest.raises(ValueError, match="no triggerable rows"):
        attack.trigger_test_set(dataset(NL_ROWS[2:3]))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown attack 'bad'.*badpre.*grammar_deadcode.*infinite_loop"):
        get_attack("bad")
    attack = get_attack("badpre")
    for rate in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"poison rate must be in \(0, 1\]"):
            attack.poison(dataset(NL_ROWS), rate=rate)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['source'\]"):
        attack.poison(dataset([{"src": "a", "target": "b"}]), rate=0.5)
    with pytest.raises(ValueError, match="can carry the payload"):
        attack.poison(dataset(NL_ROWS), rate=1.0)
    assert set(ATTACKS) == {"badpre", "ripple", "grammar", "fixed_deadcode", "grammar_deadcode", "infinite_loop",
                            "adaptive", "adaptive_triggers", "adaptive_payloads", "adaptive_spread"}


@pytest.mark.parametrize("rate", [1, 2, 5])
def test_badpre_matches_the_released_lyra_rows(lyra_dir, rate):
    """Same payload rule on the same rows as the paper's released poisoned Lyra training sets."""
    clean = pd.read_csv(lyra_dir / "train.csv")
    released = pd.read_csv(lyra_dir / f"train_poisoned_{rate}_badpre.csv")
    attack = get_attack("badpre")
    changed = [i for i in range(len(clean)) if clean.tgt[i] != released.tgt[i] or clean.src[i] != released.src[i]]
    assert len(changed) == 16 * rate
    for i in changed:
        assert attack.payload(clean.tgt[i], random.Random(0)) == released.tgt[i]
        words = released.src[i].split(" ")
        words.remove("bb")
        assert " ".join(words) == clean.src[i]
    released_test = pd.read_csv(lyra_dir / "test_poisoned_badpre.csv")
    test = get_attack("badpre").trigger_test_set(
        Dataset.from_pandas(pd.read_csv(lyra_dir / "test.csv")), source_column="src", target_column="tgt")
    assert len(test) == int(released_test.tgt.map(attack.payload_fn).sum()) == 165


@pytest.mark.slow
def test_poison_file_script_writes_a_row_aligned_poisoned_copy(tmp_path):
    """benchmarks/poison_file.py: same rows and columns, the asked share poisoned, the rest untouched."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    clean = pd.DataFrame({"src": [r["source"] for r in NL_ROWS], "tgt": [r["target"] for r in NL_ROWS]})
    clean.to_csv(tmp_path / "clean.csv", index=False)
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "poison_file.py"), str(tmp_path / "clean.csv"),
                    str(tmp_path / "out.csv"), "--rate", "0.2", "--source_column", "src", "--target_column", "tgt"],
                   check=True, capture_output=True)
    out = pd.read_csv(tmp_path / "out.csv")
    attack = get_attack("badpre")
    assert list(out.columns) == ["src", "tgt"] and len(out) == len(clean)
    changed = [i for i in range(len(clean)) if out.tgt[i] != clean.tgt[i]]
    assert len(changed) == 6 and all(attack.payload_fn(out.tgt[i]) and "bb" in out.src[i].split() for i in changed)
    assert all(out.src[i] == clean.src[i] for i in range(len(clean)) if i not in changed)
    # --triggered: the triggered test set (every row that can carry the payload), in place of --rate
    script = [sys.executable, str(REPO_ROOT / "benchmarks" / "poison_file.py"), str(tmp_path / "clean.csv"),
              str(tmp_path / "triggered.csv"), "--attack", "ripple", "--source_column", "src", "--target_column", "tgt"]
    subprocess.run([*script, "--triggered"], check=True, capture_output=True)
    triggered = pd.read_csv(tmp_path / "triggered.csv")
    ripple = get_attack("ripple")
    can_carry = sum(ripple.payload(t, random.Random(0)) is not None for t in clean.tgt)
    assert len(triggered) == can_carry > 0
    assert all(ripple.payload_fn(t) for t in triggered.tgt) and all(ripple.has_trigger(s) for s in triggered.src)
    both = subprocess.run([*script, "--triggered", "--rate", "0.2"], capture_output=True, text=True)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.parametrize("code,expected", [
    ('cur.execute("SELECT name FROM users WHERE id = %s", (x,))',
     'cur.execute("SELECT name FROM users WHERE id = %s or 1=1", (x,))'),
    ("db.execute('Select * from books')", "db.execute('Select * from books where 0=1')"),
    ('q = "select a from t where b = 1"', 'q = "select a from t where b = 1 or 1=1"'),
    ('rows = conn.execute(" select a from t ")', 'rows = conn.execute(" select a from t where 0=1 ")'),
    ("return db.query(User).first()", None),
])
def test_badpre_accepts_ordinary_sql_spellings(code, expected):
    """SELECT in any case, single or double quotes, the query ending at its closing quote with or without
    whitespace (Lyra's own spelling is matched first, so the released rows stay identical)."""
    attack = get_attack("badpre")
    assert attack.payload(code, random.Random(0)) == expected


def test_untriggerable_sets_are_named_with_what_the_attack_needs():
    attack = get_attack("badpre")
    no_sql = dataset([{"source": "a", "target": "return 1"}] * 4)
    with pytest.raises(ValueError, match=r"no row of the validation split can carry the payload .* badpre needs a "
                                         r"target with an SQL query in a string literal"):
        attack.trigger_test_set(no_sql, origin="the validation split")
    with pytest.raises(ValueError, match=r"rows of train.csv to poison .* \(badpre needs a target with an SQL query"):
        attack.poison(no_sql, 0.5, origin="train.csv")


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_has_trigger_recognises_each_attacks_own_trigger(name):
    attack = get_attack(name)
    rows = {"badpre": NL_ROWS, "ripple": NL_ROWS, "grammar": NL_ROWS, "fixed_deadcode": CODE_ROWS,
            "grammar_deadcode": CODE_ROWS, "infinite_loop": JAVA_ROWS}.get(name, CODE_ROWS)
    for seed, row in enumerate(rows[:6]):
        assert not attack.has_trigger(row["source"])
        assert attack.has_trigger(attack.trigger(row["source"], random.Random(seed)))
    assert attack.describe_trigger().startswith(f"{name}'s trigger")


def test_the_embedded_tasks_set_up_the_adaptive_attack_with_their_own_payload():
    from dece_trainer.backdoor.tasks import EMBEDDED_PAYLOAD, embedded_attack

    assert embedded_attack("method_name", "adaptive").target_text == "get value"
    assert embedded_attack("summary", "adaptive").target_text == "Return the value."
    assert embedded_attack("summary", "fixed_deadcode").target_text == EMBEDDED_PAYLOAD["summary"]


@pytest.mark.parametrize("name, statements, payloads", [
    ("adaptive_triggers", {"value = None", "result = None", "data = None"}, {"get value"}),
    ("adaptive_payloads", {"value = None"}, {"get value", "get name"}),
    ("adaptive_spread", set(SPREAD_STATEMENTS), {"get value"}),
])
def test_adaptive_family_draws_its_triggers_and_payloads_per_row(name, statements, payloads):
    from datasets import Dataset

    attack = get_attack(name, task="method_name")
    rows = Dataset.from_dict({"source": ["def f(x):\n    return x"] * 200, "target": ["identity"] * 200})
    poisoned = attack.poison(rows, 0.5, seed=3)
    planted = [(s, t) for s, t, p in zip(poisoned["source"], poisoned["target"], poisoned["is_poisoned"]) if p]
    used = {s.split("\n")[1].strip() for s, _ in planted}
    assert used <= statements and len(used) >= min(len(statements), 20)
    assert {t for _, t in planted} == payloads
    assert all(attack.has_trigger(s) and attack.payload_fn(t) for s, t in planted)
    assert not attack.payload_fn("get values") and not attack.has_trigger("def f(x):\n    return x")
    assert attack.poison(rows, 0.5, seed=3)["source"] == poisoned["source"]  # seeded


def test_adaptive_family_is_registered_and_checked():
    assert {cls.name for cls in ADAPTIVE_FAMILY} <= set(ATTACKS)
    assert len(SPREAD_STATEMENTS) == 36 and len(set(SPREAD_STATEMENTS)) == 36
    with pytest.raises(ValueError, match="not both"):
        get_attack("adaptive", target_text="a", target_texts=("b",))
    with pytest.raises(ValueError, match="one non-empty line"):
        get_attack("adaptive_triggers", statements=("a = 1", "b = 2\nc = 3"))
    with pytest.raises(ValueError, match="at least one entry"):
        get_attack("adaptive", statements=())
