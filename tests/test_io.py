"""dece_trainer.io: atomic writes leave the old content or the new, never a temporary, and never follow a link."""

import os

import pytest

from dece_trainer.io import atomic_directory, atomic_write, inside, write_json, write_text


def test_exception_inside_the_writer_leaves_no_temporary_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.jsonl"
    path.write_text("old\n")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert sorted(os.listdir(tmp_path)) == ["report.jsonl"]
    assert path.read_text() == "old\n"

    with pytest.raises(KeyboardInterrupt):  # any BaseException cleans up too
        atomic_write(tmp_path / "new.json", lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert sorted(os.listdir(tmp_path)) == ["report.jsonl"]


def test_planted_symlink_at_the_old_predictable_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    path = out / "results.json"
    planted = out / f"results.json.tmp-{os.getpid()}"  # the name the old writer used
    planted.symlink_to(victim)

    write_json(path, {"ok": 1})
    assert victim.read_text() == "precious"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    assert path.read_text() == '{\n  "ok": 1\n}\n' and not path.is_symlink()
    assert sorted(os.listdir(out)) == sorted(["results.json", planted.name])


def test_temporary_is_fresh_and_private_to_the_writer(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.getsize(tmp) == 0
        assert not os.path.islink(tmp)
        with open(tmp, "w") as f:
            f.write("x")

    atomic_write(tmp_path / "a.txt", write)
    atomic_write(tmp_path / "a.txt", write)
    assert seen[0] != seen[1] and f"tmp-{os.getpid()}" not in seen[0]
    assert (tmp_path / "a.txt").read_text() == "x" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with atomic_directory(tmp_path / "final") as tmp:
            assert not (tmp_path / "final").exists()  # not there while building
            with open(os.path.join(tmp, "weights.bin"), "w") as f:
                f.write("partial")
            raise ValueError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_directory_keeps_the_old_folder_on_failure_and_replaces_it_on_success(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_directory(final) as tmp:
            write_text(os.path.join(tmp, "new.txt"), "new")
            raise ValueError("crash while saving")
    assert sorted(os.listdir(final)) == ["old.txt"] and os.listdir(tmp_path) == ["final"]

    with atomic_directory(final) as tmp:
        write_text(os.path.join(tmp, "new.txt"), "new")
    assert sorted(os.listdir(final)) == ["new.txt"] and os.listdir(tmp_path) == ["final"]
    assert (final / "new.txt").read_text() == "new"


@pytest.mark.parametrize("name", ["..", ".", "", "/etc", "a/b", "a\\b", "../x", "x\0y"])
def test_inside_refuses_names_that_leave_the_root(tmp_path, name):
    with pytest.raises(ValueError):
        inside(tmp_path, name)


def test_inside_joins_plain_names(tmp_path):
    assert inside(tmp_path, "bench", "cell-1") == os.path.join(os.path.realpath(tmp_path), "bench", "cell-1")
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(ValueError, match="would leave"):
        inside(tmp_path, "link")


def test_write_jsonl_writes_one_compact_record_a_line_atomically(tmp_path):
    from dece_trainer.io import write_jsonl

    path = tmp_path / "sub" / "rows.jsonl"
    rows = [{"example_id": 0, "score": 1.5}, {"example_id": 1, "text": "a\nb"}]
    write_jsonl(path, iter(rows))  # any iterable, consumed once
    assert path.read_text(encoding="utf-8") == '{"example_id": 0, "score": 1.5}\n{"example_id": 1, "text": "a\\nb"}\n'
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temporary left
