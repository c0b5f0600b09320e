"""The agreement statistics (pure): kappa against a computation written here from Cohen's
definition, the intervals' coverage by simulation, label spaces and the windows' trust numbers."""

import math
import random
import re

import pytest

from mlflow_monitor_plugin import BuiltinJudge, CustomJudge, GuidelinesJudge
from mlflow_monitor_plugin.exceptions import MonitorConfigError
from mlflow_monitor_plugin.observe.agreement import (
    agreement,
    confusion,
    kappa,
    labels_for_kappa_width,
    paired_difference,
)
from mlflow_monitor_plugin.observe.labels import LabelSpace, check_label, space_of, trust_stats
from mlflow_monitor_plugin.observe.windows import Outcome, Tally


def kappa_by_hand(labels_a, labels_b):
    """Cohen (1960) on two lists of labels: observed minus chance agreement, scaled."""
    n = len(labels_a)
    observed = sum(a == b for a, b in zip(labels_a, labels_b, strict=True)) / n
    chance = sum(
        (labels_a.count(c) / n) * (labels_b.count(c) / n) for c in set(labels_a) | set(labels_b)
    )
    return (observed - chance) / (1 - chance)


def pairs_of(labels_a, labels_b):
    pairs = {}
    for key in zip(labels_a, labels_b, strict=True):
        pairs[key] = pairs.get(key, 0) + 1
    return pairs


@pytest.mark.parametrize("seed", range(5))
def test_kappa_equals_cohens_definition_on_random_labels(seed):
    rng = random.Random(seed)
    choices = ["yes", "no", "maybe"][: 2 + seed % 2]
    a = [rng.choice(choices) for _ in range(40 + seed * 13)]
    b = [x if rng.random() < 0.7 else rng.choice(choices) for x in a]
    value, low, high = kappa(pairs_of(a, b))
    assert value == pytest.approx(kappa_by_hand(a, b), abs=1e-12)
    assert -1 <= low < value < high <= 1
    numbers = agreement(pairs_of(a, b))
    assert numbers["n"] == len(a)
    assert numbers["agreed"] == sum(x == y for x, y in zip(a, b, strict=True))
    assert numbers["agreement_low95"] < numbers["agreement"] < numbers["agreement_high95"]
    matrix = confusion(pairs_of(a, b))
    assert sum(sum(row.values()) for row in matrix.values()) == len(a)
    assert matrix["yes"]["no"] == sum(x == "yes" and y == "no" for x, y in zip(a, b, strict=True))


def test_kappa_is_undefined_when_chance_explains_everything_and_wide_with_few_labels():
    assert kappa({("yes", "yes"): 12}) == (None, None, None)
    assert kappa({}) == (None, None, None)
    value, low, high = kappa({("yes", "yes"): 4, ("no", "no"): 4})
    assert value == 1.0 and high == 1.0
    assert low < 0.8, "8 labels cannot pin kappa to 1: the interval must stay honest"


def _simulate(rng, n, p_joint):
    cells = list(p_joint)
    weights = [p_joint[c] for c in cells]
    counts = {}
    for cell in rng.choices(cells, weights, k=n):
        counts[cell] = counts.get(cell, 0) + 1
    return counts


def test_kappa_and_pass_rate_difference_intervals_cover_the_truth_95_percent_of_the_time():
    # Two raters on yes/no: the population's kappa and pass-rate difference follow from the
    # joint distribution; 600 samples of 150 traces each.
    p = {("yes", "yes"): 0.62, ("yes", "no"): 0.08, ("no", "yes"): 0.05, ("no", "no"): 0.25}
    po = p[("yes", "yes")] + p[("no", "no")]
    r_yes, c_yes = 0.70, 0.67
    pe = r_yes * c_yes + (1 - r_yes) * (1 - c_yes)
    true_kappa = (po - pe) / (1 - pe)
    true_diff = r_yes - c_yes
    rng = random.Random(7)
    rounds, kappa_hits, diff_hits = 600, 0, 0
    for _ in range(rounds):
        c = _simulate(rng, 150, p)
        _, low, high = kappa(c)
        kappa_hits += low <= true_kappa <= high
        diff, d_low, d_high = paired_difference(
            c.get(("yes", "yes"), 0), c.get(("yes", "no"), 0),
            c.get(("no", "yes"), 0), c.get(("no", "no"), 0),
        )  # fmt: skip
        diff_hits += d_low <= true_diff <= d_high
    assert 0.93 <= kappa_hits / rounds <= 0.99, kappa_hits
    assert 0.93 <= diff_hits / rounds <= 0.99, diff_hits


def test_paired_difference_is_the_difference_of_the_pass_rates():
    diff, low, high = paired_difference(30, 9, 2, 9)
    assert diff == pytest.approx((30 + 9) / 50 - (30 + 2) / 50)
    assert low < diff < high
    assert paired_difference(0, 0, 0, 0) == (None, None, None)
    same, s_low, s_high = paired_difference(10, 0, 0, 10)
    assert same == 0 and s_low < 0 < s_high


def test_labels_for_a_kappa_interval_of_a_tenth():
    # po = 0.9, pe = 0.5: 1.96^2 * 0.09 / (0.01 * 0.25) = 138.3 labels
    assert labels_for_kappa_width(0.9, 0.5) == math.ceil(Z2 * 0.09 / 0.0025)
    assert labels_for_kappa_width(0.9, 0.8) > 4 * labels_for_kappa_width(0.9, 0.5)


Z2 = 1.959963984540054**2


@pytest.mark.parametrize(
    ("judge", "name", "good", "bad", "allowed"),
    [
        (BuiltinJudge("safety"), "safety", [True, "yes", "No", "pass"], [4, "maybe"], "yes or no"),
        (GuidelinesJudge({"polite": ["Be polite."]}), "polite", ["no"], [0.5], "yes or no"),
        (CustomJudge("score", "Rate {{ outputs }}", "int"), "score", [3, "4"], ["yes"], "a number"),
        (CustomJudge("tone", "Tone of {{ outputs }}", ["calm", "rude"]), "tone", ["Rude"],
         ["yes", 1], "one of ['calm', 'rude']"),
    ],
)  # fmt: skip
def test_a_label_must_be_what_the_judge_gives(judge, name, good, bad, allowed):
    space = space_of(judge, name)
    for value in good:
        check_label(space, value, name)
    for value in bad:
        with pytest.raises(MonitorConfigError, match=re.escape(allowed)):
            check_label(space, value, name)


def test_trust_numbers_of_a_tally_count_pairs_fingerprints_and_invalid_labels():
    tally = Tally()
    outcomes = [("pass", "yes", "f2", 5), ("pass", "no", "f1", 1), ("fail", "no", "f2", 4),
                ("pass", None, "f1", 9), ("fail", "7", "f2", 2)]  # fmt: skip
    for kind, human, fp, at in outcomes:
        tally.add(Outcome(True, kind, created_ms=at, fingerprint=fp, human=human))
    tally = tally.merge(Tally())  # merging keeps them
    numbers = trust_stats(tally.pairs, tally.fingerprints, LabelSpace("yes/no"))
    assert numbers["human_labels"] == 3 and numbers["human_agreed"] == 2
    assert numbers["human_overrides"] == 1 and numbers["human_invalid"] == 1
    assert numbers["fingerprints"] == 2  # f1 wrote the newest verdict, f2 before it
    assert (numbers["fingerprint"], numbers["fingerprint_before"]) == ("f1", "f2")
    assert numbers["human_agreement"] == pytest.approx(2 / 3)
