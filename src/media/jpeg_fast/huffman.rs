//! Entropy decoding: Huffman tables with the combined lookups (kept value, skipped symbols,
//! DC), their per-thread cache, and the bit reader over the entropy-coded segment.

use super::*;

/// Tables kept per thread. A camera sends the same Huffman tables in every frame (nearly all
/// use the standard ones), and building the lookups costs about 5% of a VGA thumbnail.
pub(super) const CACHED_TABLES: usize = 8;

thread_local! {
    /// (class, counts, symbols) → built table, oldest first.
    static TABLES: RefCell<Vec<(Vec<u8>, Rc<Huffman>)>> = const { RefCell::new(Vec::new()) };
}

/// The table for a DHT definition, built once per thread and definition.
pub(super) fn cached_huffman(
    class: u8,
    counts: &[u8; 16],
    symbols: &[u8],
) -> Result<Rc<Huffman>, FastError> {
    let matches = |key: &[u8]| {
        key.first() == Some(&class)
            && key.get(1..17) == Some(counts.as_slice())
            && key.get(17..) == Some(symbols)
    };
    TABLES.with(|cache| {
        // Not re-entrant, so the borrow always succeeds; building uncached is the safe answer
        // if it ever did not.
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return Huffman::new(counts, symbols, class == 1).map(Rc::from);
        };
        if let Some((_, table)) = cache.iter().find(|(key, _)| matches(key)) {
            return Ok(Rc::clone(table));
        }
        let table: Rc<Huffman> = Rc::from(Huffman::new(counts, symbols, class == 1)?);
        if cache.len() >= CACHED_TABLES {
            cache.remove(0);
        }
        let mut key = Vec::with_capacity(17 + symbols.len());
        key.push(class);
        key.extend_from_slice(counts);
        key.extend_from_slice(symbols);
        cache.push((key, Rc::clone(&table)));
        Ok(table)
    })
}

/// Bits resolved by one table lookup; 11 covers nearly every code of typical camera tables
/// while the tables (4–8 KiB each) stay in L1.
pub(super) const LOOKAHEAD: u32 = 11;

/// [`Huffman::values`] entry layout: total bits (code + value) in the low 4 bits (0: not in the
/// table), the zero run in bits 4–7, end of block in bit 8, the coefficient in the high 16 bits.
pub(super) const VAL_LEN: u32 = 0xF;
pub(super) const VAL_EOB: u32 = 1 << 8;

/// [`Huffman::skip`] entry layout: total bits in the low 4 bits (0: no whole symbol fits), the
/// advance in zigzag positions in bits 4–10, end of block in bit 15.
pub(super) const SKIP_LEN: u16 = 0xF;
pub(super) const SKIP_EOB: u16 = 1 << 15;

pub(super) struct Huffman {
    /// Indexed by the next `LOOKAHEAD` bits: `code length << 8 | symbol`, 0 when the code is
    /// longer.
    pub(super) fast: [u16; 1 << LOOKAHEAD],
    /// Indexed like `fast`: symbol and coefficient value (AC) or DC difference decoded in one
    /// step when code and value bits both fit in the lookahead (nearly every DC difference and
    /// kept coefficient). End of block is included; ZRL is not, so its range check stays on the
    /// general path, nor are DC sizes over 11, which are errors.
    pub(super) values: [u32; 1 << LOOKAHEAD],
    /// AC tables only, indexed like `fast`: how many bits and zigzag positions the whole
    /// symbols (code and value) in the window cover, up to and including an end of block. Skipped
    /// coefficients average about 5 bits, so one lookup steps over two of them on typical data.
    pub(super) skip: [u16; 1 << LOOKAHEAD],
    /// Canonical decoding for longer codes (JPEG F.2.2.3): per length, the largest code (or -1)
    /// and the offset from a code to its symbol index.
    pub(super) max_code: [i32; 17],
    pub(super) val_offset: [i32; 17],
    pub(super) symbols: [u8; 256],
}

impl Huffman {
    pub(super) fn new(counts: &[u8; 16], symbols: &[u8], ac: bool) -> Result<Box<Self>, FastError> {
        let mut t = Box::new(Huffman {
            fast: [0; 1 << LOOKAHEAD],
            values: [0; 1 << LOOKAHEAD],
            skip: [0; 1 << LOOKAHEAD],
            max_code: [-1; 17],
            val_offset: [0; 17],
            symbols: [0; 256],
        });
        if symbols.len() > 256 {
            return Err(FastError::Corrupt("Huffman table over 256 symbols"));
        }
        t.symbols[..symbols.len()].copy_from_slice(symbols);
        let mut code: i32 = 0;
        let mut k: usize = 0;
        for len in 1..=16usize {
            let count = usize::from(counts[len - 1]);
            t.val_offset[len] = k as i32 - code;
            for _ in 0..count {
                if len <= LOOKAHEAD as usize {
                    let shift = LOOKAHEAD as usize - len;
                    let first = (code as usize) << shift;
                    let entry = (len as u16) << 8 | u16::from(symbols[k]);
                    for slot in t
                        .fast
                        .get_mut(first..first + (1 << shift))
                        .into_iter()
                        .flatten()
                    {
                        *slot = entry;
                    }
                    // A DC symbol is the difference's size: as an AC symbol with run 0, except
                    // that size 0 is a zero difference rather than end of block.
                    match (ac, symbols[k]) {
                        (true, rs) => fill_values(&mut t.values, code as usize, len as u32, rs),
                        (false, 0) => {
                            for slot in t
                                .values
                                .get_mut(first..first + (1 << shift))
                                .into_iter()
                                .flatten()
                            {
                                *slot = len as u32;
                            }
                        }
                        (false, size @ 1..=11) => {
                            fill_values(&mut t.values, code as usize, len as u32, size);
                        }
                        (false, _) => {}
                    }
                }
                code += 1;
                k += 1;
            }
            if count > 0 {
                t.max_code[len] = code - 1;
            }
            if code > (1 << len) {
                return Err(FastError::Corrupt("over-subscribed Huffman table"));
            }
            code <<= 1;
        }
        if ac {
            build_skip(&t.fast, &mut t.skip);
        }
        Ok(t)
    }
}

/// Fills the [`Huffman::values`] entries of one AC code (or DC code with a non-zero size): one
/// per value its bits can hold, each covering every continuation of the window.
pub(super) fn fill_values(values: &mut [u32; 1 << LOOKAHEAD], code: usize, len: u32, rs: u8) {
    let (run, size) = (u32::from(rs >> 4), u32::from(rs & 0x0F));
    if size == 0 {
        if run != 15 {
            let shift = LOOKAHEAD - len;
            let first = code << shift;
            let entry = len | VAL_EOB;
            for slot in values
                .get_mut(first..first + (1 << shift))
                .into_iter()
                .flatten()
            {
                *slot = entry;
            }
        }
        return;
    }
    if len + size > LOOKAHEAD {
        return;
    }
    let shift = LOOKAHEAD - len - size;
    for raw in 0..1u32 << size {
        let value = extend_value(raw, size);
        let entry = (len + size) | run << 4 | u32::from(value as u16) << 16;
        let first = (code << size | raw as usize) << shift;
        for slot in values
            .get_mut(first..first + (1 << shift))
            .into_iter()
            .flatten()
        {
            *slot = entry;
        }
    }
}

/// F.2.2.1 EXTEND: `size` raw bits as a signed coefficient.
#[inline(always)]
pub(super) fn extend_value(raw: u32, size: u32) -> i32 {
    let v = raw as i32;
    if size == 0 {
        0
    } else if v < 1 << (size - 1) {
        v - (1 << size) + 1
    } else {
        v
    }
}

/// Builds [`Huffman::skip`] from the `fast` table. The entry for a `w`-bit window is its first
/// symbol plus the entry for the `w - bits` bits after it, so windows of every width from 1 up
/// are built in turn (4K entries in all, cheap next to the decode).
pub(super) fn build_skip(fast: &[u16; 1 << LOOKAHEAD], skip: &mut [u16; 1 << LOOKAHEAD]) {
    // Width `w` lives at `[1 << w, 2 << w)`; width 0 (no bits: no symbol) is the 0 at index 1.
    let mut by_width = vec![0u16; 2 << LOOKAHEAD];
    for w in 1..=LOOKAHEAD {
        for i in 0..1usize << w {
            let e = fast[i << (LOOKAHEAD - w)];
            let len = u32::from(e >> 8);
            let (run, size) = (u16::from(e as u8 >> 4), u32::from(e & 0x0F));
            if len == 0 || len + size > w {
                continue; // no whole symbol in the window: stays 0
            }
            let bits = (len + size) as u16;
            let entry = if size == 0 && run != 15 {
                bits | SKIP_EOB
            } else {
                let advance = if size == 0 { 16 } else { run + 1 };
                let rest_w = w - len - size;
                let rest = by_width[(1 << rest_w) + (i & ((1 << rest_w) - 1))];
                let rest_advance = rest >> 4 & 0x7F;
                // Chains stop at 64 positions: a block never takes more.
                if rest & SKIP_LEN != 0 && advance + rest_advance <= 64 {
                    (bits + (rest & SKIP_LEN)) | (advance + rest_advance) << 4 | rest & SKIP_EOB
                } else {
                    bits | advance << 4
                }
            };
            by_width[(1 << w) + i] = entry;
        }
    }
    skip.copy_from_slice(&by_width[1 << LOOKAHEAD..]);
}

/// MSB-first bit reader over entropy-coded data: unstuffs `FF 00`, stops at a marker and then
/// feeds zero bits. Consuming past the real data is detected lazily with [`Bits::overrun`]:
/// padding bits are always the last ones added, so once `count` drops below `padding` a padding
/// bit was consumed, and refills raise both equally. `Copy` so the block decoder can work on a
/// local copy that the compiler keeps in registers.
#[derive(Clone, Copy)]
pub(super) struct Bits<'a> {
    /// The readable entropy data: the whole input until a marker is met, then cut at the marker
    /// so the fast refill path needs no marker flag.
    pub(super) data: &'a [u8],
    /// The whole input, to find restart markers.
    pub(super) full: &'a [u8],
    pub(super) pos: usize,
    pub(super) acc: u64,
    /// Bits in `acc`; invariant after a refill: `count >= 57`.
    pub(super) count: u32,
    /// Zero bits fed past the data or a marker (never decreases until a restart).
    pub(super) padding: u32,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            full: data,
            pos,
            acc: 0,
            count: 0,
            padding: 0,
        }
    }

    pub(super) fn overrun(&self) -> bool {
        self.count < self.padding
    }

    /// True once reading stopped at a marker (rather than at the end of the input).
    pub(super) fn at_marker(&self) -> bool {
        self.data.len() < self.full.len()
    }

    #[inline(always)]
    pub(super) fn refill(&mut self) {
        // Fast path: the next 8 bytes hold no 0xFF (no stuffing, no marker), so whole bytes can
        // be appended at once.
        if let Some(chunk) = self.data.get(self.pos..self.pos + 8) {
            let mut be = [0u8; 8];
            be.copy_from_slice(chunk);
            let word = u64::from_be_bytes(be);
            let inv = !word;
            let has_ff = inv.wrapping_sub(0x0101_0101_0101_0101) & !inv & 0x8080_8080_8080_8080;
            if has_ff == 0 {
                let take = (64 - self.count) / 8 * 8;
                if take > 0 {
                    self.acc |= (word >> (64 - take)) << (64 - self.count - take);
                    self.count += take;
                    self.pos += (take / 8) as usize;
                }
                return;
            }
        }
        // By value in and out, so the caller's copy never has its address taken.
        *self = refill_slow(*self);
    }

    /// Callers keep `n <= count` (see the refill invariant); saturating anyway so a logic slip
    /// can only corrupt pixels, never panic.
    #[inline(always)]
    pub(super) fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.count = self.count.saturating_sub(n);
    }

    #[inline(always)]
    pub(super) fn peek(&self, n: u32) -> u32 {
        (self.acc >> (64 - n)) as u32
    }

    /// Decodes one Huffman symbol. The caller has refilled (≥ 57 bits buffered).
    #[inline(always)]
    pub(super) fn symbol(&mut self, t: &Huffman) -> Result<u8, FastError> {
        let entry = t.fast[self.peek(LOOKAHEAD) as usize];
        if entry != 0 {
            self.consume(u32::from(entry >> 8));
            return Ok(entry as u8);
        }
        let (symbol, len) = slow_symbol(self.acc, t)?;
        self.consume(len);
        Ok(symbol)
    }

    /// Reads `size` (≤ 16) bits as a signed JPEG coefficient (F.2.2.1 EXTEND).
    #[inline(always)]
    pub(super) fn extend(&mut self, size: u32) -> i32 {
        if size == 0 {
            return 0;
        }
        let raw = self.peek(size);
        self.consume(size);
        extend_value(raw, size)
    }

    /// Like [`Bits::symbol`] for a coefficient that is not needed: returns the run/size symbol
    /// and drops its value bits in the same step when the code came from the fast table.
    #[inline(always)]
    pub(super) fn skip_symbol(&mut self, t: &Huffman) -> Result<u8, FastError> {
        let entry = t.fast[self.peek(LOOKAHEAD) as usize];
        if entry != 0 {
            let rs = entry as u8;
            self.consume(u32::from(entry >> 8) + u32::from(rs & 0x0F));
            return Ok(rs);
        }
        let (rs, len) = slow_symbol(self.acc, t)?;
        self.consume(len + u32::from(rs & 0x0F));
        Ok(rs)
    }

    /// At a restart interval: drop the partial byte and step over the RSTn marker.
    pub(super) fn restart(&mut self) -> Result<(), FastError> {
        self.acc = 0;
        self.count = 0;
        self.padding = 0;
        self.data = self.full;
        while self.data.get(self.pos) == Some(&0xFF) && self.data.get(self.pos + 1) == Some(&0xFF) {
            self.pos += 1;
        }
        match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
            (Some(0xFF), Some(0xD0..=0xD7)) => {
                self.pos += 2;
                Ok(())
            }
            (None, _) | (Some(0xFF), None) => Err(FastError::Truncated),
            _ => Err(FastError::Corrupt("missing restart marker")),
        }
    }
}

/// Byte-at-a-time refill: unstuffs `FF 00`, and at a marker or the end of the input cuts `data`
/// there and feeds zero bits.
#[cold]
#[inline(never)]
pub(super) fn refill_slow(mut b: Bits<'_>) -> Bits<'_> {
    while b.count <= 56 {
        let mut byte = 0;
        match b.data.get(b.pos) {
            Some(&0xFF) if b.data.get(b.pos + 1) == Some(&0) => {
                byte = 0xFF;
                b.pos += 2;
            }
            Some(&0xFF) => {
                b.data = b.data.get(..b.pos).unwrap_or(b.data);
                b.padding += 8;
            }
            Some(&v) => {
                byte = v;
                b.pos += 1;
            }
            None => b.padding += 8,
        }
        b.acc |= u64::from(byte) << (56 - b.count);
        b.count += 8;
    }
    b
}

/// Codes longer than the lookahead: canonical decoding, one length at a time. A pure function of
/// the bit buffer so the hot loop's reader state never has its address taken.
#[cold]
#[inline(never)]
pub(super) fn slow_symbol(acc: u64, t: &Huffman) -> Result<(u8, u32), FastError> {
    for len in LOOKAHEAD + 1..=16 {
        let code = (acc >> (64 - len)) as i32;
        if code <= t.max_code[len as usize] {
            let idx = (code + t.val_offset[len as usize]) as usize;
            return t
                .symbols
                .get(idx)
                .map(|&s| (s, len))
                .ok_or(FastError::Corrupt("bad Huffman code"));
        }
    }
    Err(FastError::Corrupt("bad Huffman code"))
}
