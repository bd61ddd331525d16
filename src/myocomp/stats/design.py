"""A patsy design (``DesignInfo``) as JSON and back: how fitted models (the mixed model's
``model.json`` entry, the logistic results sent between processes) keep the coding of their
formula without the data it was built on."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import patsy

from myocomp.errors import DataError

__all__ = ["design_from_dict", "design_to_dict", "eval_env", "json_value"]


def eval_env() -> patsy.EvalEnvironment:
    """The environment formulas are evaluated in: numpy as ``np``, nothing of the caller's."""
    return patsy.EvalEnvironment([{"np": np}])


def json_value(v: Any) -> Any:
    """A JSON-safe Python scalar from a numpy scalar."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def design_to_dict(di: patsy.DesignInfo) -> dict:
    """JSON-safe description of ``di``; stateful transforms (center, splines) raise DataError."""
    factors = []
    for f, fi in di.factor_infos.items():
        if not isinstance(f, patsy.EvalFactor):
            raise DataError(f"formula factor {f!r} cannot be saved")
        if fi.state.get("transforms"):
            raise DataError(
                f"formula term {f.code!r} uses a stateful transform (center, standardize, "
                "splines): such models cannot be saved to JSON"
            )
        factors.append(
            {
                "code": f.code,
                "type": fi.type,
                "num_columns": fi.num_columns,
                "categories": None
                if fi.categories is None
                else [json_value(c) for c in fi.categories],
            }
        )
    terms = []
    for term, subterms in di.term_codings.items():
        terms.append(
            {
                "factors": [f.code for f in term.factors],
                "subterms": [
                    {
                        "factors": [f.code for f in st.factors],
                        "contrasts": {
                            f.code: {
                                "matrix": np.asarray(cm.matrix).tolist(),
                                "suffixes": list(cm.column_suffixes),
                            }
                            for f, cm in st.contrast_matrices.items()
                        },
                        "num_columns": st.num_columns,
                    }
                    for st in subterms
                ],
            }
        )
    return {"column_names": list(di.column_names), "factors": factors, "terms": terms}


def design_from_dict(d: dict) -> patsy.DesignInfo:
    """Inverse of :func:`design_to_dict`."""
    env = eval_env()
    factors: dict[str, patsy.EvalFactor] = {}
    infos = {}
    for fd in d["factors"]:
        f = patsy.EvalFactor(fd["code"])
        state: dict = {}
        f.memorize_passes_needed(state, env)
        factors[fd["code"]] = f
        cats = fd["categories"]
        infos[f] = patsy.FactorInfo(
            f,
            fd["type"],
            state,
            num_columns=fd["num_columns"],
            categories=None if cats is None else tuple(cats),
        )
    codings: OrderedDict = OrderedDict()
    for td in d["terms"]:
        term = patsy.Term([factors[c] for c in td["factors"]])
        codings[term] = [
            patsy.SubtermInfo(
                [factors[c] for c in st["factors"]],
                {
                    factors[c]: patsy.ContrastMatrix(np.asarray(cm["matrix"]), cm["suffixes"])
                    for c, cm in st["contrasts"].items()
                },
                st["num_columns"],
            )
            for st in td["subterms"]
        ]
    return patsy.DesignInfo(d["column_names"], factor_infos=infos, term_codings=codings)
