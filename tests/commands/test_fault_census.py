"""Issue 23's census: every failing condition the issue names, itemised, beside the test that checks it
now ends cleanly (the issue's 147 tries are not listed one by one: these are the failures it names).

    python -m tests.commands.test_fault_census     # runs those tests: "N of M conditions end cleanly"

The test here checks that each reference names a test (and a parameter) that exists, so the census
cannot point at nothing when a test is renamed."""

from __future__ import annotations

import importlib
import sys

R, F, C, P, L = (
    "tests/commands/test_refusals.py::test_a_user_caused_condition_is_one_line",
    "tests/commands/test_faults.py::test_",
    "tests/rm/test_config.py::test_every_numeric_setting_is_range_checked_in_one_line_naming_the_flag",
    "tests/probe/test_one_step.py::test_",
    "tests/commands/test_refusals.py::test_",
)
KILLED, CORRUPT = (
    F + "a_killed_run_resumes_to_the_uninterrupted_result",
    F + "a_corrupted_checkpoint_is_refused",
)

# (what the issue found, the test: "file::function", and the parameter value where it is one case)
CENSUS = {
    "lost": [
        ("kill -9 during the epoch-2 checkpoint write", KILLED, "write:checkpoint.pt:2"),
        (
            "a disk filling during the checkpoint write",
            F + "no_space_for_a_checkpoint_keeps_the_previous_one",
            None,
        ),
        ("history.json / summary.json written in place", KILLED, "replace:history.json:3"),
        (
            "an existing train --out silently overwritten",
            F + "a_finished_run_folder_is_refused_and_left_bitwise_unchanged",
            ("--objective", "ex_rm"),
        ),
        (
            "an existing probe --out silently overwritten",
            L + "a_probe_refuses_a_folder_holding_a_run_before_loading",
            None,
        ),
        ("two runs into the same --out at once", F + "a_second_run_on_a_live_runs_folder_is_refused", None),
        ("a kill during an intermediate evaluation loses the epoch", KILLED, "after_checkpoint:1"),
    ],
    "wrong or misattributed": [
        ("--eval test=a --eval test=b", R, "two sets, one name"),
        ("two evaluation files with the same stem", R, "two files, one stem"),
        ("an evaluation set named epoch", R, "a history key as a set"),
        ("an evaluation set named train_loss", R, "the loss as a set"),
        (
            "ex_rm resume with other training data",
            F + "a_resume_with_other_data_or_another_model_is_refused",
            "ex_rm",
        ),
        (
            "im_rm resume with a subset of the data",
            F + "a_resume_with_other_data_or_another_model_is_refused",
            "im_rm",
        ),
        (
            "resume with another model of the same shape",
            F + "a_resume_with_other_data_or_another_model_is_refused",
            "ex_rm",
        ),
        ("flipped bytes in a checkpoint", CORRUPT, "flip"),
        ("--resume with no checkpoint starts from scratch", R, "nothing to resume"),
        (
            "RMGAP_DATA overrides unreported by data --verify",
            L + "rmgap_data_names_what_rmgap_data_replaces",
            None,
        ),
        (
            "RMGAP_DATA overrides unrecorded in the summary",
            F + "a_shipped_set_replaced_through_rmgap_data_is_recorded_in_the_summary",
            None,
        ),
        ("duplicate JSON keys", R, "duplicate key"),
        ("--mixed-precision unrecorded and unchecked on resume", L + "check_run_names_what_differs", None),
    ],
    "nonsensical settings": [
        ("--batch-size 0", C, ("batch_size", 0, "--batch-size")),
        ("--micro-batch negative", C, ("micro_batch", -1, "--micro-batch")),
        (
            "--epochs 0",
            "tests/rm/test_config.py::test_train_refuses_bad_settings_before_the_model_loads",
            None,
        ),
        ("--epochs negative", C, ("epochs", -2, "--epochs")),
        ("--lr 0", C, ("lr", 0.0, "--lr")),
        ("--beta 0", C, ("beta", 0.0, "--beta")),
        ("--beta negative", C, ("beta", -0.1, "--beta")),
        ("--beta 1e30", C, ("beta", 1e30, "--beta")),
        ("probe --lr nan", R, "probe lr nan"),
    ],
    "internal errors": [
        (
            "the probe on an untied output head, every reward type",
            P + "probe_runs_every_reward_type_on_an_untied_head",
            None,
        ),
        (
            "probe evaluation pairs all identical",
            P + "probe_refuses_evaluation_pairs_that_are_all_identical",
            None,
        ),
        ("a truncated checkpoint", CORRUPT, "truncate"),
        ("an empty checkpoint", CORRUPT, "empty"),
        ("a text checkpoint", CORRUPT, "text"),
        ("a full disk (inline_container.cc)", F + "a_full_disk_keeps_the_previous_checkpoint", None),
        ("a broken history.json", CORRUPT, "history"),
        ("a \\ud800 escape", R, "lone surrogate"),
        ("--device cuda without one", R, "cuda, none here"),
        ("--device foo", R, "unknown device"),
        (
            "resume with a model of another shape",
            F + "a_resume_with_other_data_or_another_model_is_refused",
            "im_rm",
        ),
        ("a corrupt .gz under RMGAP_DATA", R, "corrupt gz override"),
    ],
    "late or unclear": [
        ("--out a file", R, "--out is a file"),
        ("--out a read-only place", R, "--out read-only"),
        ("--out under a file", R, "--out under a file"),
        ("probe --out bad, found after the probe", R, "probe --out is a file"),
        ("--batch-size 0: range() arg 3", R, "batch size 0"),
        ("--seed -1", R, "seed -1"),
        ("a missing model folder: the hub's message", R, "missing model folder"),
        ("a model without a tokenizer: sentencepiece", R, "no tokenizer"),
        ("a folder as --train: no such file", R, "folder as --train"),
        ("argparse's usage block", R, "argparse"),
        ("--lr -1e-3 needs --lr=", R, "negative lr as a value"),
        (
            "a deprecation warning and weight bars under --quiet",
            F + "a_killed_run_resumes_to_the_uninterrupted_result",
            None,
        ),
        (
            "a 10 MB line tokenised before it is dropped",
            "tests/lm/test_scoring.py::test_a_text_too_long_to_fit_is_refused_before_tokenising",
            None,
        ),
    ],
}


def _function(ref: str):
    path, name = ref.split("::")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def test_every_condition_names_a_test_that_exists():
    for rows in CENSUS.values():
        for what, ref, param in rows:
            fn = _function(ref)
            if param is not None:
                (mark,) = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
                assert param in list(mark.args[1]), (what, param)
    assert len({what for rows in CENSUS.values() for what, _, _ in rows}) == sum(map(len, CENSUS.values()))


class _Outcomes:
    """A pytest plugin: each test's (file::function, parameter values) → passed (or skipped)."""

    def __init__(self):
        self.items, self.passed = {}, {}

    def pytest_collection_modifyitems(self, items):
        for it in items:
            params = tuple(getattr(getattr(it, "callspec", None), "params", {}).values())
            self.items[it.nodeid] = (it.nodeid.split("[")[0], params)

    def pytest_runtest_logreport(self, report):
        ok = report.passed or report.skipped
        self.passed[report.nodeid] = self.passed.get(report.nodeid, True) and ok


def _census() -> int:
    import pytest

    refs = sorted({ref.split("::")[0] for rows in CENSUS.values() for _, ref, _ in rows})
    plugin = _Outcomes()
    pytest.main(["-q", "-p", "no:cacheprovider", *refs], plugins=[plugin])
    clean, total = 0, 0
    for kind, rows in CENSUS.items():
        for what, ref, param in rows:
            runs = [
                plugin.passed.get(nid, False)
                for nid, (fn, params) in plugin.items.items()
                if fn == ref and (param is None or param in params or param == params)
            ]
            ok = bool(runs) and all(runs)
            clean, total = clean + ok, total + 1
            print(f"{'clean' if ok else 'NOT CLEAN':9}  {kind:22}  {what}")
    print(f"{clean} of {total} conditions the issue names end cleanly")
    return 0 if clean == total else 1


if __name__ == "__main__":
    sys.exit(_census())
