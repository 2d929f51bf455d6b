//! The in-graph timeline of a diagnostic build (kiln-build with `KILN_TIMELINE=1`, see
//! kernels/common.cuh): every block of every kernel records when it entered, when its
//! PDL wait released it and when it returned, so one decode step replayed from its CUDA
//! graph shows where its time goes between and inside the kernels, which ncu (kernels
//! replayed alone) cannot. `kiln-eval timeline` runs it; the analysis below is plain
//! host code, tested without a GPU.

use super::kernels::DevPtr;
use super::memory::{download, memset0, upload, DevBuf};
use anyhow::{anyhow, Result};
use cudarc::driver::{CudaModule, CudaStream, DevicePtr};
use std::collections::BTreeMap;
use std::sync::Arc;

/// u64 words before the records: [0] records claimed, [1] capacity, the rest spare.
const HEADER: usize = 8;
/// u64 words per record (common.cuh's `TimelineBlock`).
const WORDS: usize = 6;

/// One block's record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockRecord {
    pub t_enter: u64,
    pub t_wait: u64,
    pub t_end: u64,
    pub grid: u64,
    pub sm: u32,
    pub block: u32,
    pub module: u32,
    pub line: u32,
}

impl BlockRecord {
    fn parse(w: &[u64]) -> Self {
        BlockRecord {
            t_enter: w[0],
            t_wait: w[1],
            t_end: w[2],
            grid: w[3],
            sm: (w[4] >> 32) as u32,
            block: w[4] as u32,
            module: (w[5] >> 32) as u32,
            line: w[5] as u32,
        }
    }
}

/// The device buffer every module's `kiln_timeline` points at.
pub struct Timeline {
    buf: DevBuf,
    capacity: usize,
}

impl Timeline {
    /// Points the modules of a timeline build at a new buffer of `capacity` records (module
    /// i records index i); None when the modules were built without the timeline.
    pub fn attach(modules: &[Arc<CudaModule>], stream: &Arc<CudaStream>, capacity: usize) -> Result<Option<Self>> {
        let Some(first) = modules.first() else { return Ok(None) };
        if first.get_global("kiln_timeline", stream).is_err() {
            return Ok(None);
        }
        let buf = DevBuf::zeroed((HEADER + WORDS * capacity) * 8, "the kernel timeline")?;
        upload(stream, buf.at(8), &[capacity as u64])?;
        for (i, m) in modules.iter().enumerate() {
            let global = |name: &str| -> Result<DevPtr> {
                let view = m.get_global(name, stream).map_err(|e| anyhow!("module {i} of a timeline build lacks `{name}`: {e:?}"))?;
                let (ptr, _sync) = view.device_ptr(stream);
                Ok(ptr)
            };
            upload(stream, global("kiln_timeline")?, &[buf.ptr])?;
            upload(stream, global("kiln_timeline_module")?, &[i as u64])?;
        }
        stream.synchronize().map_err(|e| anyhow!("setting up the kernel timeline: {e:?}"))?;
        Ok(Some(Timeline { buf, capacity }))
    }

    /// Forgets the records so far (enqueued on `stream`).
    pub fn reset(&self, stream: &CudaStream) -> Result<()> {
        memset0(stream, self.buf.ptr, 8)
    }

    /// The records since the last reset (synchronises `stream`), and whether some were
    /// lost to the capacity.
    pub fn read(&self, stream: &CudaStream) -> Result<(Vec<BlockRecord>, bool)> {
        let mut count = [0u64];
        download(stream, &mut count, self.buf.ptr)?;
        let n = (count[0] as usize).min(self.capacity);
        let mut words = vec![0u64; n * WORDS];
        download(stream, &mut words, self.buf.at(HEADER * 8))?;
        Ok((words.chunks(WORDS).map(BlockRecord::parse).collect(), count[0] as usize > self.capacity))
    }
}

/// A launch as the host enqueued it (the launch log, in stream order).
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchInfo {
    pub name: String,
    pub blocks: u64,
    /// Weight bytes a GEMM streams (0 for other kernels).
    pub weight_bytes: u64,
}

/// One launch seen on the timeline: its blocks' records grouped by %gridid.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// The launch's %gridid (what groups its blocks).
    pub grid: u64,
    pub module: u32,
    pub line: u32,
    pub blocks: u64,
    pub first_enter: u64,
    pub first_wait: u64,
    pub last_end: u64,
    /// The last block's release, and the 10th, 50th and 90th percentile of the blocks'
    /// ends: a GEMM whose blocks end together streamed evenly; a long way from p90 to the
    /// last end is a tail (a split-K sum, a last wave); a late last release is a slow ramp.
    pub last_wait: u64,
    pub end_q: [u64; 3],
}

/// Groups records by launch, in launch order: the order of their first block's release
/// from the PDL wait, which comes only after the predecessor has ended (every kernel of a
/// step waits for its predecessor). Not the order of entries: a PDL successor may be
/// launched once every block of its predecessor has triggered, and a block triggers when
/// its warps do, so the successor's first entry can precede the predecessor's thread 0
/// reaching its own entry (session 19: the toy model's timeline test saw an add_rmsnorm
/// enter before the m8 GEMM it follows).
pub fn launches(records: &[BlockRecord]) -> Vec<Launch> {
    let mut by_grid: BTreeMap<u64, (Launch, Vec<u64>)> = BTreeMap::new();
    for r in records {
        let (l, ends) = by_grid.entry(r.grid).or_insert_with(|| {
            let l = Launch { grid: r.grid, module: r.module, line: r.line, blocks: 0, first_enter: u64::MAX, first_wait: u64::MAX, last_end: 0, last_wait: 0, end_q: [0; 3] };
            (l, Vec::new())
        });
        l.blocks += 1;
        l.first_enter = l.first_enter.min(r.t_enter);
        l.first_wait = l.first_wait.min(r.t_wait);
        l.last_wait = l.last_wait.max(r.t_wait);
        l.last_end = l.last_end.max(r.t_end);
        ends.push(r.t_end);
    }
    let mut v: Vec<Launch> = by_grid
        .into_values()
        .map(|(mut l, mut ends)| {
            ends.sort_unstable();
            // Nearest-rank percentiles (the block at ceil(q n) - 1).
            let at = |q: f64| ends[((q * ends.len() as f64).ceil() as usize).clamp(1, ends.len()) - 1];
            l.end_q = [at(0.1), at(0.5), at(0.9)];
            l
        })
        .collect();
    v.sort_by_key(|l| (l.first_wait, l.first_enter, l.last_end));
    v
}

/// One block of a launch, for finding which blocks (or SMs) end a launch late.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockTime {
    /// The launch's index in `launches` order.
    pub launch: usize,
    pub sm: u32,
    pub block: u32,
    /// The block's release from the PDL wait and its end, in µs after the launch's first
    /// release.
    pub release_us: f64,
    pub end_us: f64,
}

/// Every record as a `BlockTime` of its launch (by %gridid; records of a grid missing from
/// `launches` are dropped), in launch order, then block order.
pub fn block_times(records: &[BlockRecord], launches: &[Launch]) -> Vec<BlockTime> {
    let index: BTreeMap<u64, usize> = launches.iter().enumerate().map(|(i, l)| (l.grid, i)).collect();
    let mut v: Vec<BlockTime> = records
        .iter()
        .filter_map(|r| {
            let &i = index.get(&r.grid)?;
            let t0 = launches[i].first_wait;
            let us = |t: u64| t.saturating_sub(t0) as f64 / 1e3;
            Some(BlockTime { launch: i, sm: r.sm, block: r.block, release_us: us(r.t_wait), end_us: us(r.t_end) })
        })
        .collect();
    v.sort_by_key(|b| (b.launch, b.block));
    v
}

/// One row of the report: a launch, what the host called it, and its times in µs from
/// the step's first entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub blocks: u64,
    pub enter_us: f64,
    pub release_us: f64,
    pub end_us: f64,
    /// How far this launch moved the step's end: its end minus the previous launch's
    /// (work between them that records nothing, such as cuBLASLt's GEMMs, counts here).
    pub advance_us: f64,
    /// From the first block's release to the last block's end.
    pub busy_us: f64,
    /// From the previous launch's end to this launch's first release: the hand-off a
    /// kernel boundary costs (0 when the release came first, as without a wait).
    pub handoff_us: f64,
    pub weight_bytes: u64,
    /// From the first block's release: the last block's release and the 10th, 50th and
    /// 90th percentile of the blocks' ends (`Launch::end_q`).
    pub last_release_from_first_us: f64,
    pub end_q_us: [f64; 3],
}

/// Names the launches with the host's log: in order, a log entry matches the next launch
/// when the launch recorded no more blocks than the entry launched (blocks that return
/// before their PDL entry record nothing); a log entry with no such launch (a kernel
/// without the entry hook) is skipped. Unmatched launches keep their source site.
pub fn rows(launches: &[Launch], log: &[LaunchInfo], site: impl Fn(u32, u32) -> String) -> Vec<Row> {
    let t0 = launches.iter().map(|l| l.first_enter).min().unwrap_or(0);
    let us = |t: u64| t.saturating_sub(t0) as f64 / 1e3;
    let mut log_i = 0;
    let mut prev_end = t0;
    launches
        .iter()
        .map(|l| {
            while log_i < log.len() && log[log_i].blocks < l.blocks {
                log_i += 1;
            }
            let (name, weight_bytes) = match log.get(log_i) {
                Some(e) => {
                    log_i += 1;
                    (e.name.clone(), e.weight_bytes)
                }
                None => (site(l.module, l.line), 0),
            };
            let advance_us = l.last_end.saturating_sub(prev_end) as f64 / 1e3;
            let handoff_us = l.first_wait.saturating_sub(prev_end) as f64 / 1e3;
            prev_end = prev_end.max(l.last_end);
            let busy_us = l.last_end.saturating_sub(l.first_wait) as f64 / 1e3;
            let from_release = |t: u64| t.saturating_sub(l.first_wait) as f64 / 1e3;
            Row {
                name,
                blocks: l.blocks,
                enter_us: us(l.first_enter),
                release_us: us(l.first_wait),
                end_us: us(l.last_end),
                advance_us,
                busy_us,
                handoff_us,
                weight_bytes,
                last_release_from_first_us: from_release(l.last_wait),
                end_q_us: l.end_q.map(from_release),
            }
        })
        .collect()
}

/// One kernel's share of a step (`by_kernel`).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelShare {
    pub kernel: String,
    pub launches: usize,
    pub advance_us: f64,
    pub busy_us: f64,
    pub handoff_us: f64,
    /// Weight bytes over the advanced time (GEMMs; 0 for the others).
    pub weight_gbs: f64,
}

/// Per kernel name (the variant suffixes dropped), largest advance first.
pub fn by_kernel(rows: &[Row]) -> Vec<KernelShare> {
    let mut m: BTreeMap<String, (usize, f64, f64, f64, u64)> = BTreeMap::new();
    for r in rows {
        let e = m.entry(kernel_family(&r.name)).or_default();
        e.0 += 1;
        e.1 += r.advance_us;
        e.2 += r.busy_us;
        e.3 += r.handoff_us;
        e.4 += r.weight_bytes;
    }
    let mut v: Vec<KernelShare> = m
        .into_iter()
        .map(|(kernel, (launches, advance_us, busy_us, handoff_us, bytes))| KernelShare {
            kernel,
            launches,
            advance_us,
            busy_us,
            handoff_us,
            weight_gbs: if advance_us > 0.0 { bytes as f64 / advance_us / 1e3 } else { 0.0 },
        })
        .collect();
    v.sort_by(|a, b| b.advance_us.total_cmp(&a.advance_us));
    v
}

/// A kernel's name without its dtype and size suffixes: `kiln_gemm_xf32_yf32_m8` ->
/// `kiln_gemm`, `kiln_gdn_decode_f32_bf16` -> `kiln_gdn_decode`.
fn kernel_family(name: &str) -> String {
    let suffix = |p: &str| {
        let dtype = |d: &str| d == "f32" || d == "bf16";
        dtype(p) || ((p.starts_with('x') || p.starts_with('y')) && dtype(&p[1..])) || (p.len() > 1 && p.starts_with('m') && p[1..].bytes().all(|b| b.is_ascii_digit()))
    };
    let parts: Vec<&str> = name.split('_').filter(|p| !suffix(p)).collect();
    parts.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(grid: u64, t_enter: u64, t_wait: u64, t_end: u64, line: u32) -> BlockRecord {
        BlockRecord { t_enter, t_wait, t_end, grid, sm: 0, block: 0, module: 1, line }
    }

    #[test]
    fn records_group_into_launches_in_start_order_and_take_the_log_names() {
        // Three launches; the second (grid 9) starts before the first ends (PDL) and
        // the log has one kernel without the hook (no records) between 2 and 3.
        let recs = [rec(7, 100, 100, 900, 10), rec(7, 120, 120, 1000, 10), rec(9, 500, 1010, 1500, 20), rec(3, 1600, 1700, 2300, 30)];
        let ls = launches(&recs);
        assert_eq!(ls.iter().map(|l| (l.line, l.blocks)).collect::<Vec<_>>(), vec![(10, 2), (20, 1), (30, 1)]);
        assert_eq!((ls[0].first_enter, ls[0].first_wait, ls[0].last_end), (100, 100, 1000));
        let log = [
            LaunchInfo { name: "kiln_gemm_xf32_yf32_m8".into(), blocks: 2, weight_bytes: 2_000_000 },
            LaunchInfo { name: "kiln_add_rmsnorm_f32".into(), blocks: 1, weight_bytes: 0 },
            LaunchInfo { name: "kiln_unhooked".into(), blocks: 0, weight_bytes: 0 },
            LaunchInfo { name: "kiln_gemm_tiled_xf32_yf32".into(), blocks: 4, weight_bytes: 1_000_000 },
        ];
        let rows = rows(&ls, &log, |m, l| format!("{m}:{l}"));
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["kiln_gemm_xf32_yf32_m8", "kiln_add_rmsnorm_f32", "kiln_gemm_tiled_xf32_yf32"]);
        // Times from the first entry, in µs; advances sum to the step's span.
        assert_eq!((rows[1].enter_us, rows[1].release_us, rows[1].end_us), (0.4, 0.91, 1.4));
        assert_eq!(rows.iter().map(|r| r.advance_us).collect::<Vec<_>>(), vec![0.9, 0.5, 0.8]);
        assert_eq!(rows.iter().map(|r| r.busy_us).collect::<Vec<_>>(), vec![0.9, 0.49, 0.6]);
        // The second launch was released 10 ns after the first ended; the third 200 ns after.
        assert_eq!(rows.iter().map(|r| r.handoff_us).collect::<Vec<_>>(), vec![0.0, 0.01, 0.2]);
        let fam = by_kernel(&rows);
        assert_eq!(fam[0].kernel, "kiln_gemm");
        assert!((fam[0].weight_gbs - 2_000_000.0 / 0.9 / 1e3).abs() < 1e-6, "GB/s of the GEMM: {fam:?}");
        assert_eq!(fam.iter().find(|f| f.kernel == "kiln_gemm_tiled").unwrap().launches, 1);
    }

    #[test]
    fn a_successor_entering_before_its_predecessor_sorts_after_it_by_release() {
        // PDL: grid 4's block entered at 90, before grid 8's thread 0 recorded its entry at
        // 100, but was released only after grid 8 ended (300).
        let ls = launches(&[rec(8, 100, 110, 300, 1), rec(4, 90, 310, 400, 2)]);
        assert_eq!(ls.iter().map(|l| l.line).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn block_ends_give_percentiles_and_the_last_release() {
        // Ten blocks released at 100..109 ns (block i at 100 + i), ending at 1000 + 100 i.
        let recs: Vec<BlockRecord> = (0..10u64).map(|i| rec(5, 50, 100 + i, 1000 + 100 * i, 7)).collect();
        let ls = launches(&recs);
        assert_eq!(ls[0].last_wait, 109);
        // Nearest rank: p10 is the 1st end, p50 the 5th, p90 the 9th.
        assert_eq!(ls[0].end_q, [1000, 1400, 1800]);
        let r = &rows(&ls, &[], |_, _| String::new())[0];
        assert!((r.last_release_from_first_us - 0.009).abs() < 1e-9);
        assert_eq!(r.end_q_us, [0.9, 1.3, 1.7]);
        assert!((r.busy_us - 1.8).abs() < 1e-9);
        // One block: every percentile is its end.
        assert_eq!(launches(&[rec(1, 0, 0, 10, 42)])[0].end_q, [10, 10, 10]);
    }

    #[test]
    fn block_times_follow_launch_order_and_count_from_the_first_release() {
        // Grid 9 is released after grid 4 ends, so it is launch 1; its blocks come back
        // in block order with times from its own first release (1010 ns).
        let mut recs = vec![rec(4, 0, 100, 900, 1), rec(9, 50, 1010, 1500, 2), rec(9, 60, 1030, 2400, 2)];
        (recs[0].sm, recs[0].block) = (3, 0);
        (recs[1].sm, recs[1].block) = (5, 1);
        (recs[2].sm, recs[2].block) = (7, 0);
        recs.push(rec(77, 0, 0, 1, 9)); // a grid not among the launches
        let ls = launches(&recs[..3]);
        let bt = block_times(&recs, &ls);
        assert_eq!(bt.iter().map(|b| (b.launch, b.block, b.sm)).collect::<Vec<_>>(), vec![(0, 0, 3), (1, 0, 7), (1, 1, 5)]);
        assert!((bt[1].release_us - 0.02).abs() < 1e-9 && (bt[1].end_us - 1.39).abs() < 1e-9, "{bt:?}");
        assert!((bt[2].release_us - 0.0).abs() < 1e-9 && (bt[2].end_us - 0.49).abs() < 1e-9, "{bt:?}");
    }

    #[test]
    fn a_launch_beyond_the_log_keeps_its_source_site() {
        let ls = launches(&[rec(1, 0, 0, 10, 42)]);
        let rows = rows(&ls, &[], |m, l| format!("module {m} line {l}"));
        assert_eq!(rows[0].name, "module 1 line 42");
    }

    #[test]
    fn kernel_families_drop_the_dtype_and_size_suffixes() {
        assert_eq!(kernel_family("kiln_gemm_sx_xf32_yf32_m16"), "kiln_gemm_sx");
        assert_eq!(kernel_family("kiln_gemm_xbf16_ybf16_m64"), "kiln_gemm");
        assert_eq!(kernel_family("kiln_gemm_tiled_xf32_ybf16"), "kiln_gemm_tiled");
        assert_eq!(kernel_family("kiln_add_rmsnorm_f32"), "kiln_add_rmsnorm");
        assert_eq!(kernel_family("kiln_gdn_decode_f32_bf16"), "kiln_gdn_decode");
    }
}
