//! A host model of the tiled decode GEMM's stage pipeline (kernels/gemm_tiled.cu,
//! `tiled_gemm<XF32, WST, XST, Y>`), so the slot and register-set schedule of any stage
//! counts is checked without a GPU: W stages go through `WST` shared-memory slots by cp.async,
//! `WST - 1` stages ahead, one group per stage; x stages through `XST` slots, stored
//! `XST - 1` stages ahead from two register sets, each loaded two stages before its store.
//! The model replays one thread's program (every thread runs the same one, with block
//! barriers between stages) and fails on any hazard: a slot overwritten while a later
//! MMA still needs it, a stage computed before its W group has landed or before its x was
//! stored, a register set reloaded before it was stored. The kernel's counts are
//! `registry::TILED_STAGES`; the paired form (`tiled_gemm<..., PAIRED>`: one cp.async wait
//! and barrier per two stages, whose W groups go out together) has
//! `registry::TILED_PAIRED_SLOTS`. Test-only: nothing at run time needs it.

/// Replays `nst` stages of the kernel with stage counts (`wst`, `xst`): W `wst - 1` stages ahead,
/// x `xst - 1`. Err names the first hazard.
fn check_schedule(wst: usize, xst: usize, nst: usize) -> Result<(), String> {
    check_distances(wst, wst - 1, xst, xst - 1, nst, false)
}

/// The paired form with `wst` / `xst` slots: W and x `slots - 2` stages ahead.
fn check_paired_schedule(wst: usize, xst: usize, nst: usize) -> Result<(), String> {
    check_distances(wst, wst - 2, xst, xst - 2, nst, true)
}

/// The same with any prefetch distances (W `wpre` stages ahead in `wst` slots, x `xpre`
/// ahead in `xst`) and either barrier pattern (`paired`: a wait for every group and a
/// barrier before even stages only, then that stage's and the next one's W issued), so a
/// test can show the model catching a schedule that is wrong.
fn check_distances(wst: usize, wpre: usize, xst: usize, xpre: usize, nst: usize, paired: bool) -> Result<(), String> {
    if wpre == 0 || xpre == 0 {
        return Err("W and x must be prefetched at least one stage ahead".into());
    }
    let mut w_slot: Vec<Option<usize>> = vec![None; wst]; // which W stage a slot holds
    let mut x_slot: Vec<Option<usize>> = vec![None; xst];
    let mut sets: [Option<usize>; 2] = [None, None]; // which x stage a register set holds
    let mut groups: Vec<usize> = Vec::new(); // W stage of each committed cp.async group
    let mut landed = 0usize; // groups complete
    // `now`: the stage of the last barrier; every stage below it was computed by every thread.
    let issue_w = |s: usize, w_slot: &mut [Option<usize>], groups: &mut Vec<usize>, now: usize| -> Result<(), String> {
        let slot = s % wst;
        if let Some(old) = w_slot[slot] {
            // The slot's stage must have been computed before the last barrier.
            if old + 1 > now {
                return Err(format!("stage {now}: W({s}) overwrites W({old}) before it is computed"));
            }
        }
        w_slot[slot] = Some(s);
        groups.push(s);
        Ok(())
    };
    let store_x = |t: usize, x_slot: &mut [Option<usize>], sets: &mut [Option<usize>; 2], now: usize| -> Result<(), String> {
        if sets[t % 2] != Some(t) {
            return Err(format!("stage {now}: x({t}) stored from a set holding {:?}", sets[t % 2]));
        }
        let slot = t % xst;
        if let Some(old) = x_slot[slot] {
            if old + 1 > now {
                return Err(format!("stage {now}: x({t}) overwrites x({old}) before it is computed"));
            }
        }
        x_slot[slot] = Some(t);
        Ok(())
    };
    let load_x = |t: usize, sets: &mut [Option<usize>; 2], stored: &[bool], now: usize| -> Result<(), String> {
        if let Some(old) = sets[t % 2] {
            if !stored[old] {
                return Err(format!("stage {now}: x({t}) loaded over x({old}) before it was stored"));
            }
        }
        sets[t % 2] = Some(t);
        Ok(())
    };
    let horizon = nst + wst + xst + 4;
    let mut stored = vec![false; horizon];
    // Prologue (stage "0" for the hazard checks: nothing is computed yet).
    for i in 0..wpre {
        issue_w(i, &mut w_slot, &mut groups, 0)?;
    }
    // The kernel loads the first stages' x together, then stores them.
    for t in 0..xpre {
        load_x(t, &mut sets, &stored, 0)?;
    }
    for t in 0..xpre {
        store_x(t, &mut x_slot, &mut sets, 0)?;
        stored[t] = true;
    }
    load_x(xpre, &mut sets, &stored, 0)?;
    load_x(xpre + 1, &mut sets, &stored, 0)?;
    let mut x_visible = vec![false; horizon]; // stored before a barrier that came since
    let mut barrier = 0; // the stage of the last barrier
    for s in 0..nst {
        if !paired || s % 2 == 0 {
            // cp_async_wait<WPRE - 1> (paired: <0>): all but the newest WPRE - 1 groups complete.
            landed = landed.max(groups.len().saturating_sub(if paired { 0 } else { wpre - 1 }));
            // __syncthreads(): every store so far is visible; every stage before s is computed.
            for (t, v) in x_visible.iter_mut().enumerate() {
                *v |= stored[t];
            }
            barrier = s;
            issue_w(s + wpre, &mut w_slot, &mut groups, barrier)?;
            if paired {
                issue_w(s + wpre + 1, &mut w_slot, &mut groups, barrier)?;
            }
        }
        store_x(s + xpre, &mut x_slot, &mut sets, barrier)?;
        stored[s + xpre] = true;
        load_x(s + xpre + 2, &mut sets, &stored, barrier)?;
        // The MMAs of stage s.
        let wg = groups.iter().position(|&g| g == s).ok_or(format!("stage {s}: W never issued"))?;
        if wg >= landed {
            return Err(format!("stage {s}: computed before its W group landed"));
        }
        if w_slot[s % wst] != Some(s) {
            return Err(format!("stage {s}: W slot holds {:?}", w_slot[s % wst]));
        }
        if x_slot[s % xst] != Some(s) || !x_visible[s] {
            return Err(format!("stage {s}: x slot holds {:?} (visible: {})", x_slot[s % xst], x_visible[s]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::registry::{TILED_PAIRED_SLOTS, TILED_STAGES};

    #[test]
    fn the_kernels_schedule_is_hazard_free_at_every_length() {
        // The kernel's stage counts, and the others measured on the device (sessions 10-11:
        // (3, 2), (4, 3), (5, 2)): the model holds for all of them.
        let (w, x) = TILED_STAGES;
        for (wst, xst) in [(w, x), (3, 2), (4, 3), (5, 2)] {
            for nst in 1..=16 {
                check_schedule(wst, xst, nst).unwrap_or_else(|e| panic!("stages ({wst}, {xst}), {nst} stages: {e}"));
            }
        }
    }

    #[test]
    fn the_paired_schedule_is_hazard_free_at_every_length() {
        let (w, x) = TILED_PAIRED_SLOTS;
        for nst in 1..=16 {
            check_paired_schedule(w, x, nst).unwrap_or_else(|e| panic!("paired slots ({w}, {x}), {nst} stages: {e}"));
        }
    }

    #[test]
    fn the_model_finds_the_hazards_it_is_for() {
        // W as many stages ahead as it has slots: W(s + 3) lands on W(s) before its MMAs.
        assert!(check_distances(3, 3, 3, 2, 6, false).unwrap_err().contains("overwrites W"));
        // x as many ahead as its slots: x(s + 2) lands on x(s).
        assert!(check_distances(5, 4, 2, 2, 6, false).unwrap_err().contains("overwrites x"));
        // x three ahead with two register sets: x(2) is loaded over x(0) before its store.
        assert!(check_distances(5, 4, 4, 3, 6, false).unwrap_err().contains("before it was stored"));
        // W one ahead while x is two ahead is fine for the slots (a shallow pipeline).
        assert!(check_distances(2, 1, 3, 2, 6, false).is_ok());
        // Pairs with three slots: the next pair's second W lands on the stage being computed.
        assert!(check_distances(3, 2, 4, 2, 6, true).unwrap_err().contains("overwrites W"));
        // Pairs with three x slots: x(s + 2) at an odd stage lands on x(s - 1), which a
        // thread past no barrier since may still read.
        assert!(check_distances(4, 2, 3, 2, 6, true).unwrap_err().contains("overwrites x"));
        // The unpaired counts with pairs: W two ahead in three slots fails the same way.
        assert!(check_paired_schedule(3, 3, 6).is_err());
    }
}
