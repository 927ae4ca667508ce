"""The report names which sanity check each failed cell failed, and what that check means; and the
settings cells differ in outside the axes."""

from types import SimpleNamespace

from frep_tf.experiments.report.markdown import sanity_lines


def cell(name, passed, checks=None, subset_checks=None):
    evaluation = {"sanity": {"passed": passed, "checks": checks or {}}}
    if subset_checks is not None:
        evaluation["autoattack_subset"] = {"sanity": {"passed": passed, "checks": subset_checks}}
        evaluation["sanity"]["checks"]["autoattack_subset"] = {"passed": passed}
    return SimpleNamespace(name=name, results={"evaluation": evaluation})


def test_failed_cells_are_grouped_by_the_check_they_failed():
    lines = sanity_lines(
        [
            cell("a", False, {"order": {"passed": True}}, {"square_in_autoattack": {"passed": False}}),
            cell("b", True, {"order": {"passed": True}}, {"square_in_autoattack": {"passed": True}}),
            cell("c", False, {"zero_gradients": {"passed": False}}, {"square_in_autoattack": {"passed": False}}),
            cell("d", None, {"black_box": {"passed": None}}),
        ]
    )
    text = "\n".join(lines)
    square = next(line for line in lines if "`square_in_autoattack`" in line)
    assert "(AutoAttack subset)" in square and "2 cells: `a`, `c`." in square and "masked" in square
    zero = next(line for line in lines if "`zero_gradients`" in line)
    assert zero.endswith("1 cell: `c`.") and "(AutoAttack subset)" not in zero
    assert "`b`" not in text and "`d`" not in text  # passed, and not judged, are not failures
    assert "autoattack_subset`" not in text  # the subset's verdict is expanded into its own checks


def test_a_failed_verdict_without_a_named_check_is_still_listed():
    lines = sanity_lines([cell("e", False)])
    assert any("no check named" in line and "`e`" in line for line in lines)


def test_nothing_is_written_when_every_cell_passed():
    assert sanity_lines([cell("a", True, {"order": {"passed": True}})]) == []


def test_settings_that_differ_outside_the_axes_are_named_with_their_values():
    from frep_tf.experiments.report.cells import Cell, _differing_note

    old = Cell("old", "", {}, config={"epochs": 30, "epoch_scale": 1.0, "seed": 0})
    new = Cell("new", "", {}, config={"epochs": 100, "epoch_scale": 0.3, "seed": 0, "harp_gamma": 0.5})
    note = _differing_note([old, new], ["epoch_scale", "epochs", "harp_gamma"])
    assert "epoch_scale (0.3 / 1.0), epochs (30 / 100): cells made with different base flags" in note
    assert "harp_gamma: recorded by some cells' config.json only" in note
    assert "seed" not in note
