"""The Spark recipe of docs/cluster.md on a real engine: ``predict_batch_udf`` over an
rnnfast model in ``local[2]`` (a JVM and two Python workers). Results equal a local
predict bitwise, whichever partition and batch a row landed in; each Python worker
computes on the threads Spark gives a task (``spark.task.cpus``), counted there.

Needs pyspark (the ``spark`` extra, about 450 MB: not in ``test``) and a Java runtime
(17 or later for Spark 4); skipped only when pyspark is absent."""

import os
import sys

import numpy as np
import pytest

import rnnfast

pyspark = pytest.importorskip("pyspark", reason="install rnnfast[spark] (pyspark) and a Java runtime")
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

pyspark.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file

T, F = 8, 8  # the bundled digits models: 8 steps of 8 features

# PySpark's own warnings about the pandas it finds: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


@pytest.fixture(scope="module")
def spark():
    # the Python workers run this interpreter (its packages), not the first python3 on PATH
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("rnnfast-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        if old is None:
            del os.environ["PYSPARK_PYTHON"]
        else:
            os.environ["PYSPARK_PYTHON"] = old


def make_predict_fn():
    """The recipe's function, as docs/cluster.md has it: called once per Python worker."""
    from pyspark import TaskContext

    import rnnfast

    model = rnnfast.load(rnnfast.example("digits_bigru"))  # a path every worker can read
    threads = TaskContext.get().cpus()  # spark.task.cpus: the cores Spark gave this task

    def predict(x):  # x: (rows, T, F) float32, one Arrow batch of a partition
        return model.predict(x, num_threads=threads)

    return predict


def _frame(spark, x):
    rows = [(i, x[i].ravel().tolist()) for i in range(len(x))]
    schema = StructType([StructField("id", IntegerType()), StructField("x", ArrayType(FloatType()))])
    return spark.createDataFrame(rows, schema).repartition(2)


def test_predict_batch_udf_equals_a_local_predict(spark):
    x = np.load(rnnfast.example("digits_test"))["x"].astype(np.float32)  # (450, 8, 8)
    want = rnnfast.load(rnnfast.example("digits_bigru")).predict(x)
    score = predict_batch_udf(
        make_predict_fn, return_type=ArrayType(FloatType()), batch_size=100, input_tensor_shapes=[[T, F]]
    )
    out = _frame(spark, x).withColumn("proba", score("x")).select("id", "proba").collect()
    assert len(out) == len(x)
    got = np.empty_like(want)
    for row in out:
        got[row["id"]] = row["proba"]
    assert np.array_equal(got, want)  # bitwise: a row's result does not depend on its batch


def count_threads_fn():
    """The recipe's function, reporting per batch the OS threads the worker process
    started while rnnfast computed (none, with one CPU per task)."""
    import os

    import numpy as np
    from pyspark import TaskContext

    import rnnfast

    model = rnnfast.load(rnnfast.example("digits_bigru"))
    threads = TaskContext.get().cpus()

    def predict(x):
        before = set(os.listdir("/proc/self/task"))
        model.predict(x, num_threads=threads)
        new = len(set(os.listdir("/proc/self/task")) - before)
        return np.full(len(x), new, np.int32)

    return predict


def test_one_thread_per_task_starts_no_thread(spark):
    x = np.load(rnnfast.example("digits_test"))["x"].astype(np.float32)
    new = predict_batch_udf(count_threads_fn, return_type=IntegerType(), batch_size=100, input_tensor_shapes=[[T, F]])
    counts = [r[0] for r in _frame(spark, x).select(new("x")).collect()]
    assert spark.conf.get("spark.task.cpus", "1") == "1"
    assert len(counts) == len(x) and set(counts) == {0}
