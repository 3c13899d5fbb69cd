"""The local GCS of tests/gcs_server.py, through every client the trainer uses on gs://.

TensorFlow (gfile, checkpoints, summaries, TFRecords), TensorBoard's EventAccumulator,
google-cloud-storage, and a TensorFlow subprocess: all must see the same buckets.
"""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.gcs_server import BUCKET


@pytest.fixture
def gs_dir(gcs_server, request):
    """A folder of the test bucket of its own for each test."""
    return f"gs://{BUCKET}/{request.node.name}"


def test_gfile_file_operations(gs_dir):
    gfile = tf.io.gfile
    gfile.makedirs(f"{gs_dir}/sub")
    with gfile.GFile(f"{gs_dir}/a.txt", "w") as f:
        f.write("hello gs")
    payload = bytes(range(256)) * 40  # binary, and more than one read buffer of curl's
    with gfile.GFile(f"{gs_dir}/sub/b.bin", "wb") as f:
        f.write(payload)
    with gfile.GFile(f"{gs_dir}/empty", "w") as f:
        f.write("")

    assert gfile.GFile(f"{gs_dir}/a.txt").read() == "hello gs"
    assert gfile.GFile(f"{gs_dir}/sub/b.bin", "rb").read() == payload
    assert gfile.GFile(f"{gs_dir}/empty", "rb").read() == b""
    assert gfile.exists(f"{gs_dir}/a.txt") and gfile.exists(f"{gs_dir}/sub")
    assert not gfile.exists(f"{gs_dir}/missing.txt")
    assert gfile.isdir(f"{gs_dir}/sub") and not gfile.isdir(f"{gs_dir}/a.txt")
    # GCS has no folders: TensorFlow lists the "sub/" prefix with its slash.
    assert sorted(gfile.listdir(gs_dir)) == ["a.txt", "empty", "sub/"]
    assert gfile.glob(f"{gs_dir}/*.txt") == [f"{gs_dir}/a.txt"]

    stat = gfile.stat(f"{gs_dir}/sub/b.bin")
    assert stat.length == len(payload) and not stat.is_directory
    assert abs(stat.mtime_nsec / 1e9 - time.time()) < 300

    gfile.rename(f"{gs_dir}/a.txt", f"{gs_dir}/renamed.txt")
    assert not gfile.exists(f"{gs_dir}/a.txt")
    assert gfile.GFile(f"{gs_dir}/renamed.txt").read() == "hello gs"
    with pytest.raises(tf.errors.AlreadyExistsError):
        gfile.rename(f"{gs_dir}/renamed.txt", f"{gs_dir}/empty", overwrite=False)

    gfile.copy(f"{gs_dir}/renamed.txt", f"{gs_dir}/copy.txt")
    assert gfile.GFile(f"{gs_dir}/copy.txt").read() == "hello gs"
    gfile.remove(f"{gs_dir}/copy.txt")
    assert not gfile.exists(f"{gs_dir}/copy.txt")
    with pytest.raises(tf.errors.NotFoundError):
        gfile.remove(f"{gs_dir}/copy.txt")

    gfile.rmtree(f"{gs_dir}/sub")
    assert not gfile.exists(f"{gs_dir}/sub/b.bin")
    assert sorted(gfile.listdir(gs_dir)) == ["empty", "renamed.txt"]


def test_listing_a_missing_bucket_fails_at_once(gcs_server):
    """What trainer.filesystem.check_output_location relies on (makedirs would retry forever)."""
    start = time.monotonic()
    with pytest.raises(tf.errors.NotFoundError):
        tf.io.gfile.listdir("gs://no-such-bucket-tunewell/")
    assert time.monotonic() - start < 3


def test_small_writes_do_not_stall(gs_dir):
    """Each upload sends "Expect: 100-continue"; unanswered, that costs curl ~1 s a file."""
    start = time.monotonic()
    for i in range(20):
        with tf.io.gfile.GFile(f"{gs_dir}/file-{i:02d}.txt", "w") as f:
            f.write(f"line {i}\n")
    assert time.monotonic() - start < 5
    assert len(tf.io.gfile.listdir(gs_dir)) == 20
    assert tf.io.gfile.GFile(f"{gs_dir}/file-13.txt").read() == "line 13\n"


def test_checkpoints_round_trip(gs_dir):
    step, weights = tf.Variable(0, dtype=tf.int64), tf.Variable(tf.zeros([3]))
    checkpoint = tf.train.Checkpoint(step=step, weights=weights)
    manager = tf.train.CheckpointManager(checkpoint, f"{gs_dir}/managed", max_to_keep=2)
    for i in (1, 2, 3):
        step.assign(i)
        weights.assign([i, 2.0 * i, 3.0 * i])
        manager.save(checkpoint_number=i)
    assert manager.checkpoints == [f"{gs_dir}/managed/ckpt-2", f"{gs_dir}/managed/ckpt-3"]
    assert tf.io.gfile.glob(f"{gs_dir}/managed/ckpt-1*") == []  # max_to_keep deleted it
    assert tf.train.latest_checkpoint(f"{gs_dir}/managed") == f"{gs_dir}/managed/ckpt-3"
    written = checkpoint.write(f"{gs_dir}/single/ckpt")

    for path, expected in ((manager.latest_checkpoint, 3), (manager.checkpoints[0], 2),
                           (written, 3)):
        fresh = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64),
                                    weights=tf.Variable(tf.zeros([3])))
        fresh.read(path).assert_existing_objects_matched()
        assert int(fresh.step) == expected
        np.testing.assert_array_equal(fresh.weights.numpy(), [expected, 2 * expected, 3 * expected])

    # A second manager on the same folder picks up the state the first one left.
    resumed = tf.train.CheckpointManager(checkpoint, f"{gs_dir}/managed", max_to_keep=2)
    assert resumed.checkpoints == manager.checkpoints


def test_summaries_read_back_by_tensorboard(gs_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    writer = tf.summary.create_file_writer(f"{gs_dir}/logs")
    with writer.as_default():
        for step in range(5):
            tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
            writer.flush()  # each flush re-uploads the growing event file
    writer.close()

    events = EventAccumulator(f"{gs_dir}/logs", size_guidance={"tensors": 0}).Reload()
    # TF2's tf.summary.scalar writes tensor summaries: they are under "tensors", not "scalars".
    assert "loss" in events.Tags()["tensors"]
    logged = {e.step: float(make_ndarray(e.tensor_proto)) for e in events.Tensors("loss")}
    assert logged == pytest.approx({step: 1.0 / (step + 1) for step in range(5)})


def test_tfrecords_round_trip(gs_dir):
    records = [f"record {i}".encode() * (i + 1) for i in range(50)]
    for options in (None, "GZIP"):
        path = f"{gs_dir}/data-{options}.tfrecord"
        with tf.io.TFRecordWriter(path, options=options) as writer:
            for record in records:
                writer.write(record)
        read = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=options)]
        assert read == records


def test_google_cloud_storage_folder_round_trip(gs_dir, tmp_path):
    from google.cloud import storage

    source = tmp_path / "source"
    # Past 8 MiB, google-cloud-storage switches from one multipart upload to a resumable one.
    files = {"config.json": b'{"a": 1}', "weights/part-0.bin": os.urandom(9 * 2**20),
             "weights/part-1.bin": os.urandom(10), "empty.txt": b""}
    for relative, content in files.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(content)

    prefix = gs_dir.removeprefix(f"gs://{BUCKET}/")
    bucket = storage.Client().bucket(BUCKET)
    for path in source.rglob("*"):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(source)}").upload_from_filename(path)

    blobs = {b.name.removeprefix(f"{prefix}/"): b for b in bucket.list_blobs(prefix=f"{prefix}/")}
    assert sorted(blobs) == sorted(files)
    assert blobs["empty.txt"].size == 0
    target = tmp_path / "target"
    for relative, blob in blobs.items():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(target / relative)
    for relative, content in files.items():
        assert (target / relative).read_bytes() == content, relative

    # Same bucket for both clients, both ways.
    assert tf.io.gfile.GFile(f"{gs_dir}/weights/part-0.bin", "rb").read() == files["weights/part-0.bin"]
    with tf.io.gfile.GFile(f"{gs_dir}/from-tf.txt", "w") as f:
        f.write("written by TensorFlow")
    assert bucket.blob(f"{prefix}/from-tf.txt").download_as_bytes() == b"written by TensorFlow"


def test_a_subprocess_reaches_the_same_server(gcs_server, gs_dir):
    code = textwrap.dedent(f"""
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import tensorflow as tf
        tf.io.gfile.makedirs("{gs_dir}/child")
        with tf.io.gfile.GFile("{gs_dir}/child/hello.txt", "w") as f:
            f.write("from the child")
        print(tf.io.gfile.listdir("{gs_dir}/child"))
    """)
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, **gcs_server.env},
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip() == "['hello.txt']"
    assert tf.io.gfile.GFile(f"{gs_dir}/child/hello.txt").read() == "from the child"
