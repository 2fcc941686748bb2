use crate::{Cursor, Offset};

use super::Storage;
use std::collections::VecDeque;
use std::io;

/// A trimmed segment gives back its buffer when it is this much larger than what it holds
/// (and above `SHRINK_MIN`): often enough to return a burst's memory, rarely enough that a
/// steady stream does not reallocate.
const SHRINK_FACTOR: usize = 4;
const SHRINK_MIN: usize = 64;

pub(crate) struct Segment<T> {
    /// Holds the actual segment. A deque so that entries every reader has passed can be
    /// dropped from the front (`trim_before`).
    pub(crate) data: VecDeque<T>,
    total_size: u64,
    /// The absolute offset of the first entry held. All reads will return the absolute
    /// offset as the offset of the cursor. Trimming moves it forward.
    ///
    /// **NOTE**: this offset is re-generated on each run of the commit log.
    pub(crate) absolute_offset: u64,
}

pub(crate) enum SegmentPosition {
    /// When the returned absolute offset exists within the current segment
    Next(u64),
    /// When the the returned absolute offset does not exist within the current segment, but
    /// instead is 1 beyond the highest absolute offset in this segment, meant for use with next
    /// segment if any exists.
    Done(u64),
}

impl<T> Segment<T>
where
    T: Storage + Clone,
{
    pub(crate) fn with_offset(absolute_offset: u64) -> Self {
        Self {
            // moonwire: grown on demand; preallocated, 1,024 entries cost ~240 KiB per filter.
            data: VecDeque::new(),
            absolute_offset,
            total_size: 0,
        }
    }
    pub(crate) fn new() -> Self {
        Self {
            // moonwire: grown on demand; preallocated, 1,024 entries cost ~240 KiB per filter.
            data: VecDeque::new(),
            absolute_offset: 0,
            total_size: 0,
        }
    }

    #[inline]
    pub(crate) fn next_offset(&self) -> u64 {
        self.absolute_offset + self.len()
    }

    /// Push a new `T` in the segment.
    #[inline]
    pub(crate) fn push(&mut self, inner_type: T) {
        self.total_size += inner_type.size() as u64;
        self.data.push_back(inner_type);
    }

    /// Drops the entries before absolute offset `offset`: no reader will ask for them again.
    /// `next_offset` is unchanged. Returns the number of entries dropped.
    pub(crate) fn trim_before(&mut self, offset: u64) -> u64 {
        let count = offset.saturating_sub(self.absolute_offset).min(self.len());
        for item in self.data.drain(..count as usize) {
            self.total_size = self.total_size.saturating_sub(item.size() as u64);
        }
        self.absolute_offset += count;
        let capacity = self.data.capacity();
        if capacity > SHRINK_MIN && capacity > SHRINK_FACTOR * self.data.len() {
            self.data.shrink_to((2 * self.data.len()).max(SHRINK_MIN));
        }
        count
    }

    #[inline]
    /// Takes in the abosolute index to start reading from. Internally handles the conversion from
    /// relative offset to absolute offset and vice-versa.
    pub(crate) fn readv(
        &self,
        cursor: Cursor,
        len: u64,
        out: &mut Vec<(T, Offset)>,
    ) -> io::Result<SegmentPosition> {
        // This substraction can never overflow as checking of offset happens at
        // `CommitLog::readv`.
        let idx = cursor.1 - self.absolute_offset;

        let mut ret: Option<u64>;

        if idx >= self.len() {
            ret = None;
        } else {
            let mut limit = idx + len;

            ret = Some(limit);

            if limit >= self.len() {
                ret = None;
                limit = self.len();
            }
            let offsets = std::iter::repeat(cursor.0).zip(cursor.1..cursor.1 + limit);
            let o = self
                .data
                .range(idx as usize..limit as usize)
                .cloned()
                .zip(offsets);
            out.extend(o);
        }

        match ret {
            Some(relative_offset) => Ok(SegmentPosition::Next(
                self.absolute_offset + relative_offset,
            )),
            None => Ok(SegmentPosition::Done(self.next_offset())),
        }
    }

    /// Get the number of `T` in the segment.
    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Get the total size in bytes of the segment.
    #[inline]
    pub(crate) fn size(&self) -> u64 {
        self.total_size
    }

    #[inline]
    pub fn last(&self) -> Option<T> {
        self.data.back().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn segment_works_for_bytes() {
        let mut mem_segment: Segment<Bytes> = Segment::new();
        let test_byte = Bytes::from_static(b"test1");
        mem_segment.push(test_byte.clone());
        assert_eq!(mem_segment.len(), 1);
        assert_eq!(mem_segment.last().unwrap(), test_byte);
    }

    #[test]
    fn readv_works_for_bytes() {
        let mut segment: Segment<Bytes> = Segment::new();
        segment.push(Bytes::from_static(b"test1"));
        segment.push(Bytes::from_static(b"test2"));
        segment.push(Bytes::from_static(b"test3"));
        segment.push(Bytes::from_static(b"test4"));
        segment.push(Bytes::from_static(b"test5"));
        segment.push(Bytes::from_static(b"test6"));
        segment.push(Bytes::from_static(b"test7"));
        segment.push(Bytes::from_static(b"test8"));
        segment.push(Bytes::from_static(b"test9"));
        assert_eq!(segment.len(), 9);

        let mut out: Vec<(Bytes, Offset)> = Vec::new();
        let _ = segment.readv((0, 0), 2, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                (Bytes::from_static(b"test1"), (0, 0)),
                (Bytes::from_static(b"test2"), (0, 1))
            ]
        );
    }

    #[test]
    fn trimmed_segment_keeps_offsets_and_reads_what_is_left() {
        let mut segment: Segment<Vec<u8>> = Segment::with_offset(10);
        for i in 0..5u8 {
            segment.push(vec![i; 3]);
        }
        assert_eq!(segment.size(), 15);

        assert_eq!(segment.trim_before(12), 2);
        assert_eq!(segment.len(), 3);
        assert_eq!(segment.size(), 9);
        assert_eq!(segment.next_offset(), 15);

        let mut out = Vec::new();
        let _ = segment.readv((0, 12), 10, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                (vec![2; 3], (0, 12)),
                (vec![3; 3], (0, 13)),
                (vec![4; 3], (0, 14))
            ]
        );

        // Trimming at or below the start drops nothing; past the end drops everything.
        assert_eq!(segment.trim_before(5), 0);
        assert_eq!(segment.trim_before(100), 3);
        assert_eq!(segment.len(), 0);
        assert_eq!(segment.size(), 0);
        assert_eq!(segment.next_offset(), 15);
        segment.push(vec![9]);
        assert_eq!(segment.next_offset(), 16);
    }

    #[test]
    fn readv_works_for_vec_of_u8() {
        let mut segment: Segment<Vec<u8>> = Segment::new();
        segment.push(vec![1u8]);
        segment.push(vec![2u8]);
        segment.push(vec![3u8]);
        segment.push(vec![4u8]);
        segment.push(vec![5u8]);
        segment.push(vec![6u8]);
        segment.push(vec![7u8]);
        segment.push(vec![8u8]);
        segment.push(vec![9u8]);
        assert_eq!(segment.len(), 9);

        let mut out: Vec<(Vec<u8>, Offset)> = Vec::new();
        let _ = segment.readv((0, 0), 2, &mut out).unwrap();
        assert_eq!(out, vec![(vec![1u8], (0, 0)), (vec![2u8], (0, 1))]);
    }
}
