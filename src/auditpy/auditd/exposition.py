"""The ledger as Prometheus metric families: names, types and help texts in one place, so
the README's sample scrape, the metrics and the state report say the same things."""

from __future__ import annotations

from auditpy.auditd.ledger import Cause
from auditpy.proto.prometheus import Family

TYPE_CHECKING = False
if TYPE_CHECKING:
    from auditpy.auditd.daemon import Daemon


def metric_families(daemon: Daemon) -> list[Family]:
    c = daemon.counters
    log_file = daemon.log_file
    link = daemon.dispatcher
    status = daemon.kernel_status
    families = [
        Family("auditpy_records_received_total", "counter",
               "Records received from the kernel (events, EOE included)").add(c.received),
        Family("auditpy_network_records_received_total", "counter",
               "Records received from audisp-remote clients").add(c.network_records),
        Family("auditpy_records_written_total", "counter",
               "Records written to the audit log, by where they came from")
        .add(c.kernel.written, source="kernel")
        .add(c.network.written, source="network")
        .add(c.own.written, source="daemon"),
        Family("auditpy_records_not_logged_total", "counter",
               "Records not written because write_logs = no (by configuration, not lost)")
        .add(c.kernel.not_logged + c.network.not_logged),
        Family("auditpy_eoe_records_total", "counter",
               "EOE records: dispatched, never written, as the C daemon does").add(c.eoe),
    ]
    lost = Family("auditpy_records_lost_total", "counter",
                  "Records lost, by cause (the loss ledger)")
    for cause in Cause:
        value = daemon.losses.total(cause.value)
        if cause is Cause.PLUGIN:
            value = sum(f.get("dropped", 0) for f in link.plugin_figures.values()) if link else 0
        if cause.value.startswith("log_"):
            value = c.kernel.not_written.get(cause.value, 0) + c.network.not_written.get(
                cause.value, 0)
        elif cause is Cause.DISPATCHER and link is not None:
            value = link.records_dropped
        lost.add(value, cause=cause.value)
    families.append(lost)
    families += [
        Family("auditpy_serial_gaps_total", "counter",
               "Events missing from the kernel's stream by their serial numbers").add(
                   c.serial_gaps),
        Family("auditpy_netlink_overruns_total", "counter",
               "ENOBUFS on the kernel socket").add(c.enobufs),
    ]
    if status is not None:
        families += [
            Family("auditpy_kernel_lost_total", "counter",
                   "The kernel's lost counter (since boot, or its last reset)").add(status.lost),
            Family("auditpy_kernel_backlog", "gauge",
                   "Records in the kernel's queue when last asked").add(status.backlog),
            Family("auditpy_kernel_backlog_limit", "gauge",
                   "The kernel's backlog_limit").add(status.backlog_limit),
            Family("auditpy_kernel_backlog_wait_time_actual", "counter",
                   "Jiffies audited processes waited for the backlog (the kernel's count)")
            .add(status.backlog_wait_time_actual),
        ]
    families.append(Family("auditpy_kernel_backlog_max", "gauge",
                           "Highest kernel backlog seen (sampled)").add(
                               daemon.ledger.kernel_backlog_max))
    if daemon.kernel is not None:
        families.append(Family("auditpy_records_cut_total", "counter",
                               "Records longer than 8970 bytes, kept cut").add(
                                   daemon.kernel.state_counts().get("truncated", 0)))
    if log_file is not None:
        families += [
            Family("auditpy_log_bytes_written_total", "counter",
                   "Bytes written to the audit log").add(log_file.bytes_written),
            Family("auditpy_log_suspended", "gauge",
                   "1 while logging is suspended or the log is closed").add(
                       1 if log_file.suspended or not log_file.is_open else 0),
        ]
    families.append(Family("auditpy_log_rotations_total", "counter",
                           "Log rotations").add(c.rotations))
    if link is not None:
        families += [
            Family("auditpy_dispatcher_records_offered_total", "counter",
                   "Records offered to pyaudispd").add(link.records_offered),
            Family("auditpy_dispatcher_records_delivered_total", "counter",
                   "Records handed to pyaudispd").add(link.records_sent),
            Family("auditpy_dispatcher_records_dropped_total", "counter",
                   "Records not handed to pyaudispd").add(link.records_dropped),
            Family("auditpy_dispatcher_records_queued", "gauge",
                   "Records waiting for pyaudispd").add(link.records_pending),
        ]
        plugins = link.plugin_figures
        for metric, kind, text in (
            ("offered", "counter", "Records offered to the plugin"),
            ("delivered", "counter", "Records delivered to the plugin"),
            ("dropped", "counter", "Records dropped for the plugin (queue full, not running)"),
            ("queued", "gauge", "Records waiting for the plugin"),
            ("restarts", "counter", "Restarts of the plugin after a crash"),
        ):
            name = (f"auditpy_plugin_records_{metric}_total" if kind == "counter"
                    and metric != "restarts" else
                    "auditpy_plugin_restarts_total" if metric == "restarts"
                    else f"auditpy_plugin_records_{metric}")
            family = Family(name, kind, text)
            for plugin, figures in sorted(plugins.items()):
                family.add(figures.get(metric, 0), plugin=plugin)
            families.append(family)
    return families
