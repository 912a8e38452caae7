"""A federated mean written with vantage6-algorithm-tools (4.x, from PyPI), exactly as a vantage6
algorithm is written: `central` makes a subtask at every organisation of the collaboration through
the node's proxy and combines what they return; `partial` reads the organisation's own database.

Enclava runs it unchanged in a sandboxed process: the node gives it vantage6's environment
(INPUT_FILE, OUTPUT_FILE, TOKEN_FILE, HOST/PORT/API_PATH, <LABEL>_DATABASE_URI) and its local proxy
seals each subtask's input to its organisation and opens the subtasks' results for it.
Run with PKG_NAME=v6_mean and vantage6's wrapper:
    python -c "from vantage6.algorithm.tools.wrap import wrap_algorithm; wrap_algorithm()"
"""

import pandas as pd

from vantage6.algorithm.client import AlgorithmClient
from vantage6.algorithm.tools.decorators import algorithm_client, data
from vantage6.algorithm.tools.util import info


@algorithm_client
def central(client: AlgorithmClient, column: str) -> dict:
    """Asks every organisation for the sum and count of `column`, and returns their mean."""
    organisations = [o["id"] for o in client.organization.list()]
    info(f"asking {len(organisations)} organisations for their partial sums")
    task = client.task.create(
        input_={"method": "partial", "kwargs": {"column": column}},
        organizations=organisations,
        name="partial sums",
    )
    results = client.wait_for_results(task_id=task["id"])
    total = sum(r["sum"] for r in results)
    count = sum(r["count"] for r in results)
    return {"mean": total / count, "count": count, "organisations": len(results)}


@data(1)
def partial(df: pd.DataFrame, column: str) -> dict:
    """The sum and count of `column` in this organisation's data: nothing else leaves it."""
    values = df[column]
    return {"sum": float(values.sum()), "count": int(values.count())}
