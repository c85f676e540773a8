"""OS, hardware, disks and volatile metrics, read from /etc/os-release, /proc and /sys.

Every parser takes text (or a path) and skips what it cannot read; a missing
field is left at its default rather than failing the section.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping

from rampart.wire.inventory import (
    DEFAULT_LIMITS,
    CpuTicks,
    Disk,
    DiskUsage,
    Hardware,
    InventoryLimits,
    Metrics,
    OsInfo,
    canonical,
    disk_key,
)

from ._util import clip, try_read_text
from .eol import eol_status

#: Filesystems without a block device that still hold real data.
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "virtiofs", "zfs",
                        "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "lustre"})
#: Pseudo filesystems never reported, whatever /proc/filesystems says.
PSEUDO_FS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "cgroup", "cgroup2",
                       "securityfs", "debugfs", "tracefs", "pstore", "bpf", "mqueue", "hugetlbfs", "autofs",
                       "fusectl", "configfs", "binfmt_misc", "efivarfs", "nsfs", "rpc_pipefs", "overlay",
                       "squashfs", "selinuxfs", "fuse.lxcfs", "fuse.portal", "fuse.gvfsd-fuse"})
_SYS_DMI = "/sys/class/dmi/id"


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of an os-release file, quotes removed; bad lines skipped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if key.strip().isidentifier():
            out[key.strip()] = value
    return out


def boot_time(stat_text: str) -> int:
    """``btime`` of /proc/stat (unix seconds), 0 when absent."""
    for line in stat_text.splitlines():
        if line.startswith("btime "):
            value = line.split()[1]
            return int(value) if value.isdigit() else 0
    return 0


def collect_os(*, now: int, eol_table: Mapping[tuple[str, str], tuple[str, str]],
               os_release_path: str = "/etc/os-release") -> OsInfo:
    rel = parse_os_release(try_read_text(os_release_path) or try_read_text("/usr/lib/os-release") or "")
    uname = os.uname()
    os_id = rel.get("ID", "linux")
    version_id = rel.get("VERSION_ID", "")
    machine_id = (try_read_text("/etc/machine-id", 4096) or "").strip()
    return OsInfo(
        id=clip(os_id), name=clip(rel.get("PRETTY_NAME") or rel.get("NAME") or "Linux"),
        version_id=clip(version_id), codename=clip(rel.get("VERSION_CODENAME", "")),
        id_like=[clip(x) for x in rel.get("ID_LIKE", "").split()[:16]],
        kernel_release=clip(uname.release), kernel_version=clip(uname.version), arch=clip(uname.machine),
        hostname=clip(socket.gethostname()),
        machine_id=clip(machine_id) if all(c in "0123456789abcdef" for c in machine_id) else "",
        boot_time=boot_time(try_read_text("/proc/stat") or ""),
        eol=eol_status(os_id, version_id, now=now, table=eol_table),
    )


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per key; lines that do not parse are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            out[key.strip()] = int(parts[0]) * scale
    return out


def parse_cpuinfo(text: str) -> tuple[str, int, int, int]:
    """(model, logical CPUs, physical cores, sockets) from /proc/cpuinfo."""
    model = ""
    logical = 0
    packages: set[str] = set()
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not key:
            if core:
                cores.add((phys, core))
            phys = core = ""
            continue
        if key == "processor":
            logical += 1
        elif key in ("model name", "Model", "cpu model", "Hardware") and not model:
            model = value
        elif key == "physical id":
            phys = value
            packages.add(value)
        elif key == "core id":
            core = value
    return clip(model), logical, len(cores) or logical, len(packages) or (1 if logical else 0)


def _dmi(name: str) -> str:
    return clip((try_read_text(f"{_SYS_DMI}/{name}", 4096) or "").strip())


def collect_hardware() -> Hardware:
    model, logical, cores, sockets = parse_cpuinfo(try_read_text("/proc/cpuinfo", 8 << 20) or "")
    mem = parse_meminfo(try_read_text("/proc/meminfo") or "")
    return Hardware(
        cpu_model=model, logical_cpus=logical or (os.cpu_count() or 0), physical_cores=cores, sockets=sockets,
        mem_total_bytes=mem.get("MemTotal", 0), swap_total_bytes=mem.get("SwapTotal", 0),
        vendor=_dmi("sys_vendor"), product=_dmi("product_name"), serial=_dmi("product_serial"),
        bios_version=_dmi("bios_version"),
    )


def _unescape_mount(field: str) -> str:
    """Undo the octal escapes (``\\040`` for space, ...) of /proc/self/mounts."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and all(c in "01234567" for c in field[i + 1:i + 4]):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def block_filesystems(filesystems_text: str) -> frozenset[str]:
    """Filesystem types that need a block device (no ``nodev`` mark) in /proc/filesystems."""
    out = set()
    for line in filesystems_text.splitlines():
        parts = line.split()
        if len(parts) == 1:
            out.add(parts[0])
    return frozenset(out)


def parse_mounts(text: str, real_fs: frozenset[str]) -> list[tuple[str, str, str, bool]]:
    """(mountpoint, device, fstype, read_only) of real filesystems, one per device (first mount wins)."""
    out = []
    seen_devices: set[tuple[str, str]] = set()
    seen_points: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        device, point = _unescape_mount(parts[0]), _unescape_mount(parts[1])
        fstype, options = parts[2], parts[3]
        real = fstype in real_fs or fstype in NETWORK_FS or fstype.startswith("fuse.")
        if fstype in PSEUDO_FS or not real:
            continue
        if not point.startswith("/") or point in seen_points or (device, fstype) in seen_devices:
            continue
        seen_points.add(point)
        seen_devices.add((device, fstype))
        out.append((point, device, fstype, "ro" in options.split(",")))
    return out


def collect_disks(limits: InventoryLimits = DEFAULT_LIMITS) -> tuple[list[Disk], list[DiskUsage], bool]:
    """Real filesystems and their usage; the flag says the list was cut at ``limits.max_disks``."""
    real_fs = block_filesystems(try_read_text("/proc/filesystems") or "")
    mounts = parse_mounts(try_read_text("/proc/self/mounts", 8 << 20) or "", real_fs)
    disks: list[Disk] = []
    usage: list[DiskUsage] = []
    for point, device, fstype, read_only in mounts:
        try:
            st = os.statvfs(point)
        except OSError:
            continue
        total = st.f_blocks * st.f_frsize
        disks.append(Disk(mountpoint=point[:4096], device=device[:4096], fstype=clip(fstype),
                          total_bytes=total, inodes_total=st.f_files, read_only=read_only))
        usage.append(DiskUsage(mountpoint=point[:4096], used_bytes=max(0, total - st.f_bfree * st.f_frsize),
                               avail_bytes=st.f_bavail * st.f_frsize, inodes_free=st.f_ffree))
    disks = canonical(disks, disk_key)
    usage = canonical(usage, lambda u: (u.mountpoint,))
    truncated = len(disks) > limits.max_disks
    return disks[: limits.max_disks], usage[: limits.max_disks], truncated


def parse_cpu_ticks(stat_text: str) -> CpuTicks:
    """The aggregate ``cpu`` line of /proc/stat."""
    for line in stat_text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            v = [int(x) if x.isdigit() else 0 for x in parts[1:9]] + [0] * 8
            return CpuTicks(user=v[0], nice=v[1], system=v[2], idle=v[3], iowait=v[4], irq=v[5], softirq=v[6],
                            steal=v[7])
    return CpuTicks()


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and 0 <= value <= 1e9 else 0.0


def collect_metrics(disk_usage: list[DiskUsage]) -> Metrics:
    uptime = (try_read_text("/proc/uptime") or "").split()
    load = (try_read_text("/proc/loadavg") or "").split()
    running, _, total = (load[3] if len(load) > 3 else "").partition("/")
    mem = parse_meminfo(try_read_text("/proc/meminfo") or "")
    return Metrics(
        uptime_s=_finite(uptime[0]) if uptime else 0.0,
        load1=_finite(load[0]) if load else 0.0,
        load5=_finite(load[1]) if len(load) > 1 else 0.0,
        load15=_finite(load[2]) if len(load) > 2 else 0.0,
        procs_running=int(running) if running.isdigit() else 0,
        procs_total=int(total) if total.isdigit() else 0,
        mem_available_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
        mem_free_bytes=mem.get("MemFree", 0), swap_free_bytes=mem.get("SwapFree", 0),
        clk_tck=os.sysconf("SC_CLK_TCK"), cpu=parse_cpu_ticks(try_read_text("/proc/stat") or ""),
        disks=disk_usage,
    )
