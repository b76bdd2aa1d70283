//! Unit tests: each builds a fake /proc + /sys tree in a temp dir and runs the checks on it.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fake host root under the system temp dir, removed on drop.
struct FakeHost {
    root: PathBuf,
}

impl FakeHost {
    fn new(test: &str) -> FakeHost {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "tutti-tuning-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            test
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        FakeHost { root }
    }

    fn write(&self, absolute: &str, contents: &str) -> &Self {
        let path = self.root.join(absolute.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        self
    }

    fn dir(&self, absolute: &str) -> &Self {
        fs::create_dir_all(self.root.join(absolute.trim_start_matches('/'))).unwrap();
        self
    }

    fn symlink(&self, link: &str, target: &str) -> &Self {
        let link = self.root.join(link.trim_start_matches('/'));
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
        self
    }

    /// Four online CPUs, cpufreq on each with `governor`.
    fn cpus(&self, governor: Option<&str>) -> &Self {
        self.write("/sys/devices/system/cpu/online", "0-3\n");
        for cpu in 0..4 {
            self.dir(&format!("/sys/devices/system/cpu/cpu{cpu}"));
            if let Some(governor) = governor {
                self.write(
                    &format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                    &format!("{governor}\n"),
                );
            }
        }
        self
    }

    fn checks(&self, shard_cores: &[usize]) -> Vec<Check> {
        run_checks(&CheckOptions {
            shard_cores: shard_cores.to_vec(),
            root: self.root.clone(),
            in_daemon: false,
            cluster: None,
        })
    }

    fn check(&self, shard_cores: &[usize], name: &str) -> Check {
        self.checks(shard_cores)
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check named {name}"))
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

const LIMITS_8MIB: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
Max address space         unlimited            unlimited            bytes
";

const INTERRUPTS: &str = "\
           CPU0       CPU1       CPU2       CPU3
 24:          1          0          0          0  IO-APIC   5-edge      ACPI:Ged
 26:          0         14          0          0  IO-APIC   4-edge      ttyS0
 37:          0          0          0          0  PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0       1527          0          0  PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       1090          0          0          0  PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 50:          0          0          0          0  IR-PCI-MSI 1572864-edge      mlx5_comp0@pci:0000:3b:00.0
 60:          5          0          0          0  IR-PCI-MSI 2097152-edge      eth1-TxRx-0
NMI:          0          0          0          0   Non-maskable interrupts
LOC:      22743      28334      11111      22222   Local timer interrupts
";

/// A host with a virtio NIC (eth0), a mlx5 NIC (ens1) and an ixgbe-style NIC (eth1), plus
/// lo without a device.
fn with_nics(host: &FakeHost, affinity: &[(u32, &str)]) {
    host.write("/proc/interrupts", INTERRUPTS)
        .symlink(
            "/sys/class/net/eth0/device",
            "../../../devices/pci0000:00/0000:00:03.0/virtio2",
        )
        .symlink(
            "/sys/class/net/ens1/device",
            "../../../devices/pci0000:3a/0000:3b:00.0",
        )
        .dir("/sys/class/net/eth1/device")
        .dir("/sys/class/net/lo");
    for (irq, list) in affinity {
        host.write(&format!("/proc/irq/{irq}/smp_affinity_list"), list);
    }
}

#[test]
fn cpu_lists_parse_and_format_like_the_kernel() {
    let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(parse_cpu_list("0-3,8\n"), Some(set(&[0, 1, 2, 3, 8])));
    assert_eq!(parse_cpu_list(""), Some(set(&[])));
    assert_eq!(parse_cpu_list("0-7:2/4"), Some(set(&[0, 1, 4, 5])));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("x"), None);
    assert_eq!(parse_isolcpus("nohz,domain,managed_irq,2-3"), Some(set(&[2, 3])));
    assert_eq!(format_cpu_list(&set(&[0, 1, 2, 5, 7, 8])), "0-2,5,7-8");
    assert_eq!(format_cpu_list(&set(&[])), "none");
}

#[test]
fn governor_performance_is_ok_and_powersave_warns() {
    let good = FakeHost::new("gov-good");
    good.cpus(Some("performance"));
    let c = good.check(&[2, 3], "cpu.scaling_governor");
    assert_eq!((c.found.as_str(), c.ok), ("performance", true));

    let bad = FakeHost::new("gov-bad");
    bad.cpus(Some("performance")).write(
        "/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor",
        "powersave\n",
    );
    let c = bad.check(&[2, 3], "cpu.scaling_governor");
    assert_eq!(c.found, "performance on 2, powersave on 3");
    assert!(!c.ok);
    // Unpinned: every online CPU counts.
    let c = bad.check(&[], "cpu.scaling_governor");
    assert_eq!(c.found, "performance on 0-2, powersave on 3");
}

#[test]
fn governor_absent_in_a_vm_is_not_exposed_and_ok() {
    let vm = FakeHost::new("gov-vm");
    vm.cpus(None);
    let c = vm.check(&[1], "cpu.scaling_governor");
    assert_eq!((c.found.as_str(), c.ok), ("not exposed", true));
}

#[test]
fn isolated_shard_cores_are_ok_from_sysfs_or_cmdline() {
    let sysfs = FakeHost::new("iso-sysfs");
    sysfs
        .cpus(None)
        .write("/sys/devices/system/cpu/isolated", "2-3\n")
        .write("/proc/cmdline", "quiet nohz_full=2-3 root=/dev/vda\n");
    let c = sysfs.check(&[2, 3], "cpu.isolated");
    assert_eq!(c.found, "isolated 2-3, nohz_full 2-3");
    assert_eq!(c.recommended, "isolcpus=2-3 nohz_full=2-3");
    assert!(c.ok);

    let cmdline = FakeHost::new("iso-cmdline");
    cmdline
        .cpus(None)
        .write("/proc/cmdline", "isolcpus=managed_irq,domain,3 quiet\n");
    let c = cmdline.check(&[3], "cpu.isolated");
    assert_eq!((c.found.as_str(), c.ok), ("isolated 3, nohz_full none", true));
    cmdline.write("/sys/devices/system/cpu/nohz_full", "3\n");
    let c = cmdline.check(&[3], "cpu.isolated");
    assert_eq!(c.found, "isolated 3, nohz_full 3");
}

#[test]
fn shard_cores_not_isolated_warn() {
    let host = FakeHost::new("iso-bad");
    host.cpus(None)
        .write("/sys/devices/system/cpu/isolated", "\n")
        .write("/proc/cmdline", "quiet\n");
    let c = host.check(&[2, 3], "cpu.isolated");
    assert_eq!((c.found.as_str(), c.ok), ("isolated none, nohz_full none", false));
    // Nothing pinned, nothing to isolate.
    assert!(host.check(&[], "cpu.isolated").ok);
}

#[test]
fn nic_irqs_off_the_shard_cores_are_ok() {
    let host = FakeHost::new("irq-good");
    host.cpus(None);
    with_nics(
        &host,
        &[(37, "0-3"), (38, "0"), (39, "1"), (50, "0-1"), (60, "1")],
    );
    let c = host.check(&[2, 3], "irq.nic_affinity");
    // irq 37 (virtio2-config), 24 and 26 are not NIC queues and are ignored.
    assert_eq!(c.found, "4 NIC IRQs on 0-1");
    assert_eq!(c.recommended, "off cores 2-3");
    assert!(c.ok);
}

#[test]
fn nic_irqs_on_a_shard_core_warn_and_are_listed() {
    let host = FakeHost::new("irq-bad");
    host.cpus(None);
    with_nics(&host, &[(38, "0-3"), (39, "1"), (50, "2"), (60, "0,3")]);
    let c = host.check(&[2, 3], "irq.nic_affinity");
    assert_eq!(
        c.found,
        "irq 38 (virtio2-input.0) on 0-3; irq 50 (mlx5_comp0@pci:0000:3b:00.0) on 2; irq 60 (eth1-TxRx-0) on 0,3"
    );
    assert!(!c.ok);
}

#[test]
fn no_physical_nic_means_no_nic_irqs() {
    let host = FakeHost::new("irq-none");
    host.cpus(None)
        .write("/proc/interrupts", INTERRUPTS)
        .dir("/sys/class/net/lo");
    let c = host.check(&[2], "irq.nic_affinity");
    assert_eq!((c.found.as_str(), c.ok), ("no NIC queue IRQs found", true));
}

#[test]
fn socket_buffer_limits_need_8_mib() {
    let host = FakeHost::new("rmem");
    host.write("/proc/sys/net/core/rmem_max", "212992\n")
        .write("/proc/sys/net/core/wmem_max", "8388608\n");
    let rmem = host.check(&[], "net.core.rmem_max");
    assert_eq!((rmem.found.as_str(), rmem.ok), ("212992", false));
    assert_eq!(rmem.recommended, ">= 8388608 (8 MiB)");
    let wmem = host.check(&[], "net.core.wmem_max");
    assert_eq!((wmem.found.as_str(), wmem.ok), ("8388608", true));
}

#[test]
fn missing_socket_buffer_limit_warns() {
    let host = FakeHost::new("rmem-missing");
    let c = host.check(&[], "net.core.rmem_max");
    assert!(c.found.starts_with("unreadable"), "{}", c.found);
    assert!(!c.ok);
}

#[test]
fn busy_poll_is_reported_but_opt_in() {
    let host = FakeHost::new("busy");
    host.write("/proc/sys/net/core/busy_poll", "0\n")
        .write("/proc/sys/net/core/busy_read", "50\n");
    let poll = host.check(&[], "net.core.busy_poll");
    assert_eq!((poll.found.as_str(), poll.ok), ("0", true));
    assert_eq!(poll.recommended, "50 on latency hosts (opt-in)");
    let read = host.check(&[], "net.core.busy_read");
    assert_eq!((read.found.as_str(), read.ok), ("50", true));
}

#[test]
fn guest_halt_poll_is_reported_but_opt_in() {
    let guest = FakeHost::new("haltpoll");
    guest
        .write("/sys/devices/system/cpu/cpuidle/current_driver", "haltpoll\n")
        .write("/sys/module/haltpoll/parameters/guest_halt_poll_ns", "0\n");
    let c = guest.check(&[], "cpu.guest_halt_poll");
    assert_eq!(
        (c.found.as_str(), c.ok),
        (
            "haltpoll, guest_halt_poll_ns 0 (a halted vCPU wakes through the host)",
            true
        )
    );
    assert_eq!(c.recommended, "200000 on latency guests (opt-in)");
    guest.write("/sys/module/haltpoll/parameters/guest_halt_poll_ns", "200000\n");
    let c = guest.check(&[], "cpu.guest_halt_poll");
    assert_eq!(c.found, "haltpoll, guest_halt_poll_ns 200000");
    let metal = FakeHost::new("intel_idle");
    metal.write("/sys/devices/system/cpu/cpuidle/current_driver", "intel_idle\n");
    let c = metal.check(&[], "cpu.guest_halt_poll");
    assert_eq!(
        (c.found.as_str(), c.ok),
        ("cpuidle driver intel_idle (not a haltpoll guest)", true)
    );
    let none = FakeHost::new("no_cpuidle");
    assert_eq!(
        none.check(&[], "cpu.guest_halt_poll").found,
        "no cpuidle driver (not a haltpoll guest)"
    );
}

#[test]
fn thp_always_warns_and_madvise_or_never_is_ok() {
    for (modes, active, ok) in [
        ("[always] madvise never\n", "always", false),
        ("always [madvise] never\n", "madvise", true),
        ("always madvise [never]\n", "never", true),
    ] {
        let host = FakeHost::new("thp");
        host.write("/sys/kernel/mm/transparent_hugepage/enabled", modes);
        let c = host.check(&[], "mm.transparent_hugepage");
        assert_eq!((c.found.as_str(), c.ok), (active, ok), "{modes}");
    }
    let none = FakeHost::new("thp-none");
    let c = none.check(&[], "mm.transparent_hugepage");
    assert_eq!((c.found.as_str(), c.ok), ("not exposed", true));
}

#[test]
fn memlock_needs_64_mib_or_unlimited() {
    let low = FakeHost::new("memlock-low");
    low.write("/proc/self/limits", LIMITS_8MIB);
    let c = low.check(&[], "rlimit.memlock");
    assert_eq!((c.found.as_str(), c.ok), ("8388608 (8 MiB)", false));

    let unlimited = FakeHost::new("memlock-unlimited");
    unlimited.write(
        "/proc/self/limits",
        &LIMITS_8MIB.replace("8388608              8388608", "unlimited            unlimited"),
    );
    let c = unlimited.check(&[], "rlimit.memlock");
    assert_eq!((c.found.as_str(), c.ok), ("unlimited", true));

    let enough = FakeHost::new("memlock-64");
    enough.write(
        "/proc/self/limits",
        &LIMITS_8MIB.replace("8388608              8388608", "67108864             67108864"),
    );
    assert!(enough.check(&[], "rlimit.memlock").ok);
}

#[test]
fn memlock_finding_says_whose_limit_it_is() {
    let low = FakeHost::new("memlock-whose");
    low.write("/proc/self/limits", LIMITS_8MIB);
    let checker = low.check(&[], "rlimit.memlock");
    assert!(checker.why.contains("not of a running tuttid"), "{}", checker.why);
    let daemon = run_checks(&CheckOptions {
        shard_cores: Vec::new(),
        root: low.root.clone(),
        in_daemon: true,
        cluster: None,
    })
    .into_iter()
    .find(|c| c.name == "rlimit.memlock")
    .unwrap();
    assert_eq!((daemon.found.as_str(), daemon.ok), ("8388608 (8 MiB)", false));
    assert!(daemon.why.starts_with("This is tuttid's own"), "{}", daemon.why);
    assert!(!daemon.why.contains("checking process"), "{}", daemon.why);
}

#[test]
fn io_uring_disabled_values() {
    for (value, ok) in [("0\n", true), ("1\n", false), ("2\n", false)] {
        let host = FakeHost::new("uring");
        host.write("/proc/sys/kernel/io_uring_disabled", value);
        let c = host.check(&[], "kernel.io_uring_disabled");
        assert_eq!(c.ok, ok, "{value}: {}", c.found);
    }
    let old_kernel = FakeHost::new("uring-old");
    let c = old_kernel.check(&[], "kernel.io_uring_disabled");
    assert!(c.ok && c.found.starts_with("not present"), "{}", c.found);
}

#[test]
fn shard_cores_must_exist_and_be_online() {
    let host = FakeHost::new("shards");
    host.cpus(None).write("/sys/devices/system/cpu/online", "0-2\n");
    let c = host.check(&[1, 2], "shard_cores");
    assert_eq!((c.found.as_str(), c.ok), ("online 0-2", true));
    let c = host.check(&[2, 3, 7], "shard_cores");
    assert_eq!(c.found, "online 0-2; missing 7; offline 3");
    assert_eq!(c.recommended, "cores 2-3,7 present and online");
    assert!(!c.ok);
}

#[test]
fn table_is_aligned_and_json_has_the_documented_keys() {
    let host = FakeHost::new("render");
    host.cpus(Some("performance"));
    let checks = host.checks(&[1]);
    assert_eq!(checks.len(), 12);

    let table = render_table(&checks);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), checks.len() + 1);
    let status_column = lines[0].find("STATUS").unwrap();
    for (line, check) in lines[1..].iter().zip(&checks) {
        assert!(line.starts_with(&check.name));
        let status = if check.ok { "ok" } else { "WARN" };
        // Columns are aligned by characters; all text before STATUS is ASCII except µ,
        // which only appears in the last column.
        assert_eq!(&line[status_column..status_column + status.len()], status);
        assert!(line.ends_with(&check.why));
    }

    let json: serde_json::Value = serde_json::from_str(&to_json(&checks)).unwrap();
    let array = json.as_array().unwrap();
    assert_eq!(array.len(), checks.len());
    let keys: Vec<&String> = array[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["found", "name", "ok", "recommended", "why"]);
    assert_eq!(array[0]["name"], "shard_cores");
    assert!(array[0]["ok"].is_boolean());
}

#[test]
fn the_real_host_can_be_read_without_panicking() {
    let checks = run_checks(&CheckOptions::new(vec![0]));
    assert_eq!(checks.len(), 12);
    assert!(checks.iter().all(|c| !c.why.is_empty()));
}

#[test]
fn a_cluster_beyond_loopback_without_a_key_is_flagged() {
    let exposure = |text: &str| ClusterExposure::from_config(text).unwrap();
    let open = exposure("node_id = 3\n[cluster]\nenabled = true\nseeds = []\n[net]\nlisten = \"0.0.0.0\"\n");
    let c = check_cluster_key(&open);
    assert!(
        !c.ok && c.found.contains("0.0.0.0") && c.why.contains("tutti keygen"),
        "{c:?}"
    );
    let keyed = exposure(
        "[cluster]\nenabled = true\nkey_file = \"/etc/tutti/cluster.key\"\n[net]\nlisten = \"10.0.0.1\"\n",
    );
    assert!(check_cluster_key(&keyed).ok);
    assert!(
        check_cluster_key(&exposure("[cluster]\nenabled = true\n")).ok,
        "loopback by default"
    );
    assert!(
        check_cluster_key(&exposure("[net]\nlisten = \"10.0.0.1\"\n")).ok,
        "cluster off"
    );
    assert!(ClusterExposure::from_config("[net]\nlisten = \"nowhere\"\n")
        .unwrap_err()
        .contains("net.listen"));
    // Only when the daemon's config is known does the check run.
    let none = run_checks(&CheckOptions::default());
    assert!(none.iter().all(|c| c.name != "cluster.key_file"));
    let with = run_checks(&CheckOptions {
        cluster: Some(open),
        ..CheckOptions::default()
    });
    assert!(with.iter().any(|c| c.name == "cluster.key_file" && !c.ok));
}
