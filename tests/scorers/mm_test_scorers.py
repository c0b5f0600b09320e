"""Code judges for the tests, exposed through entry points of group ``mlflow_monitor.scorers``
by the ``.dist-info`` that tests/conftest.py writes beside this module."""

from mlflow.entities import Feedback
from mlflow.genai.scorers import Scorer, scorer


@scorer
def tone_check(outputs) -> Feedback:
    calm = "!" not in str(outputs)
    return Feedback(value="calm" if calm else "shouting", rationale="counted exclamation marks")


@scorer
def always_fails(outputs) -> bool:
    raise ValueError("the tone model is not loaded")


@scorer
def returns_nonsense(outputs):
    return {"not": "a verdict"}


class WordCount(Scorer):
    name: str = "word_count"

    def __call__(self, *, outputs=None) -> int:
        return len(str(outputs).split())
