"""The keeper of one sandbox VM: a process apart from qubesd that holds the VM's mounts.

Invariant: a VM's loop mounts exist only in its keeper's private mount namespace, so
they vanish with it whatever happens to qubesd, and no other VM or host process sees
them. The keeper detaches from qubesd (double fork, new session), mounts the VM's
volumes (root, private, volatile), starts bubblewrap with the VM's init as pid 1,
writes the VM's record (pids, their start ticks, namespaces) for qubesd to find it
again after a restart, waits for the sandbox to end, writes the init's exit code into
the record, unmounts (the loop devices, set to autoclear, detach) and exits. qubesd
reads what happened from the record and the process exits, never from the keeper's
word alone.

Keepers are forked, not executed: ``python KEEPER_FILE SOCKET_FD RUN_ROOT`` (by path:
it imports nothing of the project) is a server that qubesd starts once and that forks
a keeper for each request on its socket, so that a VM start does not pay for a new
Python and its imports. A request is one ``SOCK_SEQPACKET`` record, the spec (JSON)
with two descriptors: the status pipe, on which the keeper writes one JSON line
``{"init-pid": N, ...}`` or ``{"error": TEXT}``, and the guest log, its output. The
server is single-threaded (forking it is safe), owns nothing of a VM, and exits when
qubesd hangs up (or dies); the keepers it forked live on. RUN_ROOT only names the
installation it serves (in ``ps``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback

CLONE_NEWNS = 0x00020000
MS_NOATIME = 1024
MS_REC = 16384
MS_SLAVE = 1 << 19
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LOOP_MAJOR = 7
LOOP_TRIES = 1000
LOOP_PAUSE = 0.001  # short: VMs starting together race for the same free device
EXT_MAGIC_OFFSET = 1080
EXT_MAGIC = b"\x53\xef"
INIT = "/usr/lib/qubes-sandbox/init"


class KeeperError(Exception):
    """A step of the start failed; the text says which and why."""


def has_ext_fs(image: str) -> bool:
    """Whether ``image`` holds an ext2/3/4 file system (its superblock magic)."""
    with open(image, "rb") as file:
        file.seek(EXT_MAGIC_OFFSET)
        return file.read(2) == EXT_MAGIC


LIBC = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise KeeperError(f"{what} failed: {os.strerror(ctypes.get_errno())}")


def private_namespace() -> None:
    """Move this process into a mount namespace of its own, whose mounts no one else sees."""
    _check(LIBC.unshare(CLONE_NEWNS), "unshare of the mount namespace")
    # Slave, not private: the host's later unmounts reach this copy, so a keeper never
    # pins a file system that the host unmounts; our mounts never reach the host.
    _check(LIBC.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "making / a slave mount")


class LoopConfig(ctypes.Structure):
    """``struct loop_config`` of <linux/loop.h> (LOOP_CONFIGURE, Linux 5.8)."""

    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
                ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
                ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_char * 64),
                ("lo_crypt_name", ctypes.c_char * 64), ("lo_encrypt_key", ctypes.c_char * 32),
                ("lo_init", ctypes.c_uint64 * 2), ("reserved", ctypes.c_uint64 * 8)]


def attach_loop(image: str) -> tuple[int, str]:
    """A loop device on ``image`` (autoclear: it detaches when its last user lets go):
    an open descriptor of it and its path. The system calls mount(8) makes, without its process."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(LOOP_TRIES):  # another process may take the free one first
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                if not os.path.exists(device):
                    with contextlib.suppress(FileExistsError):
                        os.mknod(device, 0o660 | 0o060000, os.makedev(LOOP_MAJOR, number))
                loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                config = LoopConfig(fd=backing, lo_flags=LO_FLAGS_AUTOCLEAR)
                config.lo_file_name = os.fsencode(image)[-63:]
                try:
                    fcntl.ioctl(loop, LOOP_CONFIGURE, config)
                except OSError:
                    os.close(loop)
                    time.sleep(LOOP_PAUSE)  # until the other one has configured it
                    continue
                return loop, device
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise KeeperError(f"no free loop device for {image}")


def mount_image(image: str, point: str) -> None:
    """Loop-mount the ext4 image ``image`` on ``point`` (read-write, noatime)."""
    loop, device = attach_loop(image)
    try:  # once mounted, the mount holds the device; closing ours lets autoclear act
        # noinit_itable: no kernel thread zeroing the inode tables of a new file system
        # behind the VM's back (I/O and CPU time during the start, for nothing)
        if LIBC.mount(device.encode(), point.encode(), b"ext4", MS_NOATIME,
                      b"noinit_itable") != 0:
            raise KeeperError(f"mounting {image} failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(loop)


def start_ticks(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot (guards against pid reuse)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


def write_record(path: str, record: dict) -> None:
    """Replace the record at ``path`` atomically (written whole, then renamed). Not synced:
    it only has to outlive qubesd, never the host, whose crash ends the VM with it."""
    temp = f"{path}~{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as file:
        json.dump(record, file)
    os.replace(temp, path)


def mount_volumes(spec: dict) -> list[str]:
    """Loop-mount the VM's volumes; the mount points, in mount order."""
    mounted: list[str] = []
    mnt = spec["mount_dir"]
    root = spec["root"]
    if not has_ext_fs(root):
        raise KeeperError("its root volume holds no ext4 file system (build templates with "
                          "qubes-template-build)")
    volumes = [("root", root)]
    # qubesd gave them their file systems (a new volatile one at every start, as Qubes)
    for name, key in (("rw", "private"), ("volatile", "volatile")):
        if spec.get(key):
            if not has_ext_fs(spec[key]):
                raise KeeperError(f"its {key} volume holds no ext4 file system")
            volumes.append((name, spec[key]))
    try:
        for name, image in volumes:
            point = os.path.join(mnt, name)
            os.makedirs(point, exist_ok=True)
            mount_image(image, point)
            mounted.append(point)
            if name == "volatile":
                os.chmod(point, 0o1777)  # the VM's /tmp
    except BaseException:
        unmount(mounted)
        raise
    problem = root_problem(os.path.join(mnt, "root"))
    if problem:
        unmount(mounted)
        raise KeeperError(problem)
    return mounted


def root_problem(root: str) -> str | None:
    """Why the root file system at ``root`` cannot run the in-VM side, if it cannot."""
    if not os.access(os.path.join(root, INIT.lstrip("/")), os.F_OK):
        return (f"its root volume has no {INIT} (not a template built by "
                "qubes-template-build)")
    python = os.path.join(root, "usr/bin/python3")
    target = os.readlink(python) if os.path.islink(python) else "python3"
    if not os.path.lexists(python) or not os.path.exists(
            os.path.join(root, "usr/bin", os.path.basename(target))):
        return ("its root volume has no /usr/bin/python3, which the VM's init and qrexec "
                "agent need (rebuild the template with qubes-template-build)")
    return None


def unmount(points: list[str]) -> None:
    """Unmount ``points`` in reverse order (loop devices set to autoclear detach)."""
    for point in reversed(points):
        LIBC.umount2(point.encode(), 0)


def bwrap_argv(spec: dict, status_fd: int) -> list[str]:
    """The bubblewrap command line of the VM: its namespaces and binds."""
    mnt = spec["mount_dir"]
    argv = ["bwrap", "--as-pid-1", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--hostname", spec["name"],
            "--bind", os.path.join(mnt, "root"), "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/run"]
    if spec.get("private"):
        argv += ["--bind", os.path.join(mnt, "rw"), "/rw"]
    if spec.get("volatile"):
        argv += ["--bind", os.path.join(mnt, "volatile"), "/tmp"]
    else:
        argv += ["--tmpfs", "/tmp"]
    argv += ["--bind", spec["channel_dir"], "/run/qubes-sandbox",
             "--json-status-fd", str(status_fd), "--chdir", "/",
             "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin",
             "--", INIT]
    return argv


def keep(spec: dict, status: int) -> int:
    """The keeper's life: mount, start, record, wait, unmount."""
    private_namespace()
    mounted = mount_volumes(spec)
    bwrap = None
    init_pid = None
    try:
        bwrap_status_r, bwrap_status_w = os.pipe()
        bwrap = subprocess.Popen(bwrap_argv(spec, bwrap_status_w), pass_fds=[bwrap_status_w],
                                 stdin=subprocess.DEVNULL)
        os.close(bwrap_status_w)
        lines = os.fdopen(bwrap_status_r, "rb")
        first = lines.readline()
        if not first:
            code = bwrap.wait()
            raise KeeperError(f"bubblewrap exited ({code}) before the VM's init ran "
                              "(see the guest log)")
        info = json.loads(first)
        init_pid = int(info["child-pid"])
        record = {"keeper-pid": os.getpid(), "keeper-ticks": start_ticks(os.getpid()),
                  "init-pid": init_pid, "init-ticks": start_ticks(init_pid),
                  "pid-namespace": info.get("pid-namespace"), "started": time.time()}
        write_record(spec["record"], record)
        try:
            os.write(status, (json.dumps(record) + "\n").encode())
            os.close(status)
        except OSError:
            pass  # qubesd is gone: it finds the VM again from the record
    except BaseException:
        if init_pid is not None:  # pid 1 of its namespace: all the VM dies with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signal.SIGKILL)
        if bwrap is not None:
            with contextlib.suppress(ProcessLookupError):
                bwrap.kill()
            bwrap.wait()
        unmount(mounted)
        raise
    try:
        exit_code = None
        for line in lines:  # bubblewrap's last line carries the init's exit code
            try:
                exit_code = json.loads(line).get("exit-code", exit_code)
            except ValueError:
                pass
        code = bwrap.wait()
        record["exit-code"] = exit_code if exit_code is not None else code
        write_record(spec["record"], record)
    finally:
        unmount(mounted)
    return 0


MAX_REQUEST = 65536


def serve(sock: socket.socket) -> int:
    """Fork a keeper for each request on ``sock`` until qubesd hangs up."""
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(sock, MAX_REQUEST, 2)
        except InterruptedError:
            continue
        if not data:
            return 0
        try:
            if len(fds) != 2:
                raise ValueError("a request needs the status pipe and the guest log")
            spec = json.loads(data)
        except ValueError as error:
            print(f"keeper server: bad request: {error}", file=sys.stderr, flush=True)
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock.close()
                code = detach_and_keep(spec, *fds)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        os.waitpid(pid, 0)  # the first child exits as soon as the keeper is forked


def detach_and_keep(spec: dict, status: int, output: int) -> int:
    """In the server's child: a new session, then the keeper in a grandchild (which no
    one waits for: it outlives the server and qubesd)."""
    os.setsid()
    if os.fork():
        return 0
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    try:
        return keep(spec, status)
    except (KeeperError, OSError, ValueError, KeyError) as error:
        message = (str(error) if isinstance(error, KeeperError)
                   else f"{type(error).__name__}: {error}")
        print(f"keeper of {spec.get('name')}: {message}", file=sys.stderr, flush=True)
        try:
            os.write(status, (json.dumps({"error": message}) + "\n").encode())
        except OSError:
            pass
        return 1
    finally:
        sys.stdout.flush()


def main() -> int:
    """The server on the socket ``argv[1]`` (a descriptor number)."""
    return serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    sys.exit(main())
