"""The default thread count respects the host (OMP_NUM_THREADS, affinity mask, cgroup
quota), every count is capped, and num_threads is checked where it comes in."""
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from _testing import random_weights
from rnnfast import _threads
from rnnfast._threads import (available_cpus, cgroup_cpu_limit, default_num_threads, max_threads,
                              omp_num_threads, resolve_num_threads)
from rnnfast.layers import RNNLayer


@pytest.fixture
def host(monkeypatch):
    """A pretend host: ``host(cpus=, affinity=, quota=, omp=)`` sets what the readers see."""
    def set_(cpus=16, affinity=16, quota=None, omp=None):
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
        monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: quota)
        if omp is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", omp)
        _threads._host.clear()                          # read once per process: read again
    monkeypatch.setattr(_threads, "_num_threads", None)
    monkeypatch.setattr(_threads, "_warned", set())
    monkeypatch.setattr(_threads, "_host", {})
    return set_


# -- the default -------------------------------------------------------------------------


@pytest.mark.parametrize("cpus,affinity,quota,omp,want", [
    (16, 16, None, None, 16),          # nothing set: all CPUs
    (16, 4, None, None, 4),            # taskset -c 0-3
    (16, 16, 2.0, None, 2),            # docker --cpus=2
    (16, 16, 2.5, None, 3),            # fractional quotas round up
    (16, 16, 0.2, None, 1),            # ... and never below 1
    (16, 4, 8.0, None, 4),             # the smaller of mask and quota
    (16, 16, 2.0, "1", 1),             # OMP_NUM_THREADS wins ...
    (16, 4, None, "8", 8),             # ... also above mask and quota (as scikit-learn)
    (16, 16, None, "4,2", 4),          # a list: its first level
    (16, 16, None, " 3 ", 3),
    (16, 16, None, "", 16),            # empty: as if unset
    (2, 2, None, "1000", 8),           # capped at 4 per CPU of the machine
])
def test_default(host, cpus, affinity, quota, omp, want):
    host(cpus=cpus, affinity=affinity, quota=quota, omp=omp)
    assert default_num_threads() == want
    assert rnnfast.get_num_threads() == want
    assert resolve_num_threads(None) == resolve_num_threads(0) == resolve_num_threads(-1) == want


@pytest.mark.parametrize("bad", ["abc", "0", "-2", "2.5", "4,x", "٣"])
def test_invalid_omp_num_threads_ignored_with_one_warning(host, bad):
    host(cpus=16, affinity=6, omp=bad)
    with pytest.warns(RuntimeWarning, match="OMP_NUM_THREADS"):
        assert omp_num_threads() is None
    assert default_num_threads() == 6                  # warned once: no second warning
    assert default_num_threads() == 6


def test_host_read_once_and_again_on_request(host, monkeypatch):
    host(cpus=16, affinity=16, omp="3")
    assert rnnfast.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: 1.0)
    assert rnnfast.get_num_threads() == 3                # as OpenMP: read once
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert rnnfast.get_num_threads() == 3
    rnnfast.set_num_threads(None)                       # ... and again on request
    assert rnnfast.get_num_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    rnnfast.set_num_threads(0)
    assert rnnfast.get_num_threads() == 1               # the quota, read again
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: None)
    rnnfast.set_num_threads(None)
    assert rnnfast.get_num_threads() == 2               # the mask: read on every call


def test_no_affinity_call(host, monkeypatch):
    host(cpus=12)
    monkeypatch.delattr(os, "sched_getaffinity")      # macOS, Windows
    assert available_cpus() == 12


# -- explicit counts ---------------------------------------------------------------------


def test_counts_and_cap(host):
    host(cpus=4, affinity=2)
    assert max_threads() == 16
    for n, want in [(1, 1), (3, 3), (16, 16), (17, 16), (50_000, 16), (10**6, 16), (2**31, 16),
                    (2**100, 16), (np.int64(5), 5), (-1, 2), (-2, 1), (-3, 1), (-10**9, 1)]:
        assert resolve_num_threads(n) == want, n
    rnnfast.set_num_threads(10**6)
    assert rnnfast.get_num_threads() == 16
    rnnfast.set_num_threads(-1)
    assert rnnfast.get_num_threads() == 2
    rnnfast.set_num_threads(0)
    assert rnnfast.get_num_threads() == 2
    rnnfast.set_num_threads(5)
    assert resolve_num_threads(None) == 5 and resolve_num_threads(3) == 3
    rnnfast.set_num_threads(None)
    assert rnnfast.get_num_threads() == 2


@pytest.mark.parametrize("bad", [2.0, 2.5, "2", "two", True, False, [2], np.float64(2), object()])
def test_num_threads_of_the_wrong_type(bad, rng):
    layer = RNNLayer("gru", [random_weights(rng, "gru", 3, 4)])
    for call in (lambda: rnnfast.set_num_threads(bad), lambda: resolve_num_threads(bad),
                 lambda: layer.forward(np.zeros((2, 1, 3)), num_threads=bad)):
        with pytest.raises(TypeError, match=r"num_threads must be an int or None, got .*\(\w+\)"):
            call()


def test_huge_counts_run(rng):
    """10**6 threads segfaulted, 50,000 made libgomp end the process, 2**31 overflowed:
    in a child, so that a regression cannot take the test run down with it."""
    code = """if 1:
        import numpy as np, rnnfast
        from rnnfast.layers import RNNLayer, CellWeights
        rng = np.random.default_rng(0)
        for cell, H in (("gru", 8), ("lstm", 192)):       # the item path and the blocked path
            G = 3 if cell == "gru" else 4
            layer = RNNLayer(cell, [CellWeights(rng.standard_normal((4, G * H)) * .1,
                                                rng.standard_normal((H, G * H)) * .1)])
            x = rng.standard_normal((20, 3, 4))
            want = layer.forward(x, num_threads=1)[0]
            for n in (10**6, 50000, 2**31, 2**63, 2**100):
                assert np.array_equal(layer.forward(x, num_threads=n)[0], want)
        rnnfast.set_num_threads(10**6)
        print(rnnfast.get_num_threads())
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout) == max_threads()


# -- cgroups -----------------------------------------------------------------------------


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _mountinfo(*mounts):
    """mountinfo lines for (root, mount point, fstype, super options)."""
    return "".join("%d 1 0:%d %s %s rw,nosuid - %s cgroup %s\n" % (30 + i, 40 + i, root, mp, fs, opts)
                   for i, (root, mp, fs, opts) in enumerate(mounts))


def test_cgroup_v2_own_cgroup_and_ancestors(tmp_path):
    fs = tmp_path / "sys"
    _write(tmp_path / "cgroup", "0::/kubepods/pod1/ctr\n")
    _write(tmp_path / "mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
           + _mountinfo(("/", str(fs), "cgroup2", "rw,nsdelegate")))
    _write(fs / "cpu.max", "max 100000\n")
    _write(fs / "kubepods/cpu.max", "max 100000\n")
    _write(fs / "kubepods/pod1/cpu.max", "150000 100000\n")      # the pod: 1.5 CPUs
    _write(fs / "kubepods/pod1/ctr/cpu.max", "max 100000\n")      # the container: none of its own
    args = str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")
    assert cgroup_cpu_limit(*args) == 1.5
    _write(fs / "kubepods/pod1/ctr/cpu.max", "50000 100000\n")
    assert cgroup_cpu_limit(*args) == 0.5
    _write(fs / "cpu.max", "20000 100000\n")                     # an ancestor's tighter quota binds
    assert cgroup_cpu_limit(*args) == 0.2


def test_cgroup_v2_namespaced_and_unlimited(tmp_path):
    fs = tmp_path / "sys"
    _write(tmp_path / "cgroup", "0::/\n")                         # a cgroup namespace: we are the root
    _write(tmp_path / "mountinfo", _mountinfo(("/", str(fs), "cgroup2", "rw")))
    args = str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")
    assert cgroup_cpu_limit(*args) is None                         # no cpu.max at all
    _write(fs / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(*args) is None
    _write(fs / "cpu.max", "300000 100000\n")
    assert cgroup_cpu_limit(*args) == 3


def test_cgroup_v1_cpu_hierarchy(tmp_path):
    cpu = tmp_path / "sys" / "cpu,cpuacct"
    _write(tmp_path / "cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(tmp_path / "mountinfo", _mountinfo(
        ("/", str(tmp_path / "sys" / "memory"), "cgroup", "rw,memory"),
        ("/", str(cpu), "cgroup", "rw,cpu,cpuacct")))
    _write(cpu / "cpu.cfs_quota_us", "-1\n")
    _write(cpu / "cpu.cfs_period_us", "100000\n")
    _write(cpu / "docker/abc/cpu.cfs_quota_us", "250000\n")
    _write(cpu / "docker/abc/cpu.cfs_period_us", "100000\n")
    args = str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")
    assert cgroup_cpu_limit(*args) == 2.5
    _write(cpu / "docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(*args) is None


def test_cgroup_v1_mounted_at_the_containers_own_cgroup(tmp_path):
    """Docker without cgroup namespaces: /proc/self/cgroup names /docker/abc and the
    hierarchy's mount shows that very cgroup (mount root /docker/abc)."""
    cpu = tmp_path / "cpu"
    _write(tmp_path / "cgroup", "4:cpuacct,cpu:/docker/abc\n")
    _write(tmp_path / "mountinfo", _mountinfo(("/docker/abc", str(cpu), "cgroup", "ro,cpuacct,cpu")))
    _write(cpu / "cpu.cfs_quota_us", "50000\n")
    _write(cpu / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")) == 0.5


def test_cgroup_mount_point_with_a_space(tmp_path):
    fs = tmp_path / "my cgroup"
    _write(tmp_path / "cgroup", "0::/a\n")
    _write(tmp_path / "mountinfo", _mountinfo(("/", str(fs).replace(" ", "\\040"), "cgroup2", "rw")))
    _write(fs / "a/cpu.max", "100000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")) == 1


@pytest.mark.parametrize("cgroup,mountinfo,files", [
    (None, None, {}),                                              # no /proc (not Linux)
    ("0::/a\n", "", {}),                                           # no cgroup mounted
    ("garbage\n", _mountinfo(("/", "{fs}", "cgroup2", "rw")), {"cpu.max": "50000 100000"}),
    ("0::/a\n", _mountinfo(("/", "{fs}", "cgroup2", "rw")), {"a/cpu.max": "lots"}),
    ("0::/a\n", _mountinfo(("/", "{fs}", "cgroup2", "rw")), {"a/cpu.max": "0 100000"}),
    ("0::/a\n", _mountinfo(("/", "{fs}", "cgroup2", "rw")), {"a/cpu.max": "50000 0"}),
    ("0::/a\n", _mountinfo(("/", "{fs}", "cgroup2", "rw")), {"a/cpu.max": ""}),
    ("0::/../../etc\n", _mountinfo(("/", "{fs}", "cgroup2", "rw")), {}),
])
def test_cgroup_files_missing_or_odd(tmp_path, cgroup, mountinfo, files):
    fs = tmp_path / "fs"
    fs.mkdir()
    if cgroup is not None:
        _write(tmp_path / "cgroup", cgroup)
        _write(tmp_path / "mountinfo", mountinfo.replace("{fs}", str(fs)))
    for name, text in files.items():
        _write(fs / name, text)
    assert cgroup_cpu_limit(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")) is None


def test_this_hosts_cgroup_reads():
    q = cgroup_cpu_limit()
    assert q is None or q > 0
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


# -- a real process ------------------------------------------------------------------------


def _num_threads_in_child(env_extra=(), pre="", drop=("OMP_NUM_THREADS",)):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    code = pre + "import rnnfast; print(rnnfast.get_num_threads())"
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env,
                       capture_output=True, text=True, timeout=120)
    return r


def test_omp_num_threads_in_a_real_process():
    """The issue's check: ``OMP_NUM_THREADS=1 python -c "import rnnfast; print(rnnfast.get_num_threads())"``
    prints 1."""
    r = _num_threads_in_child({"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    r = _num_threads_in_child({"OMP_NUM_THREADS": "3,1"})
    assert r.returncode == 0 and r.stdout.strip() == str(min(3, max_threads())), r.stderr
    r = _num_threads_in_child({"OMP_NUM_THREADS": "lots"})
    assert r.returncode != 0 and "RuntimeWarning" in r.stderr and "OMP_NUM_THREADS" in r.stderr


def test_affinity_in_a_real_process():
    one = sorted(os.sched_getaffinity(0))[0]
    r = _num_threads_in_child(pre="import os; os.sched_setaffinity(0, {%d}); " % one)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    if os.path.exists("/usr/bin/taskset") or os.path.exists("/bin/taskset"):
        r = subprocess.run(["taskset", "-c", str(one), sys.executable, "-c",
                            "import rnnfast; print(rnnfast.get_num_threads())"],
                           env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
