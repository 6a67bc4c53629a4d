//! The memory allocator of plugins built with the SDK.
//!
//! Every hook call hands the plugin its arguments in freshly allocated
//! memory — each string and list separately, a dozen allocations for one
//! `transform` — and the plugin frees them again when the hook returns. On
//! top of Rust's default allocator for WebAssembly (wasi-libc's dlmalloc),
//! this keeps one free list per size class (powers of two from 16 bytes to
//! 2 KiB): a small allocation pops a block of its class, a free pushes it
//! back, so the next call's arguments reuse the same blocks in a few
//! instructions. Larger allocations, and blocks a free list has not seen
//! yet, come from dlmalloc. Blocks of a class are not handed back to
//! dlmalloc; an instance lives for one broadcast, so what is kept is
//! bounded by what the plugin used at once.
//!
//! The router allocates the arguments through the component's exported
//! `cabi_realloc`, and the generated bindings free them with Rust's
//! allocator, so both must be the same allocator: [`cabi_realloc`] below
//! replaces wasi-libc's (a weak symbol that calls C `realloc`) with one
//! that allocates through Rust's. Every block handed out is still a
//! dlmalloc block underneath, so wasi-libc may `free` what the router
//! returns from its own imports.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr;

/// The smallest class: 16 bytes (room for the free list's link).
const MIN_SHIFT: u32 = 4;
/// Classes: 16, 32, …, 2048 bytes.
const CLASSES: usize = 8;
/// The largest class.
const MAX_SMALL: usize = 1 << (MIN_SHIFT as usize + CLASSES - 1);
/// The alignment every block of a class has.
const BLOCK_ALIGN: usize = 16;

/// Size-class free lists over a backing allocator. Not thread-safe: a
/// WebAssembly component runs on one thread.
pub struct SizeClasses<A> {
    backing: A,
    free: [Cell<*mut u8>; CLASSES],
}

// SAFETY: a wasm32 component has exactly one thread (no shared memory, no
// threads proposal), so the cells are never reached from two threads.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for SizeClasses<A> {}

impl<A> SizeClasses<A> {
    /// Empty free lists over `backing`.
    pub const fn new(backing: A) -> Self {
        Self {
            backing,
            free: [const { Cell::new(ptr::null_mut()) }; CLASSES],
        }
    }
}

/// The class of `layout`, if it is small enough to have one.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > BLOCK_ALIGN {
        return None;
    }
    let size = layout.size().max(1 << MIN_SHIFT).next_power_of_two();
    Some((size.trailing_zeros() - MIN_SHIFT) as usize)
}

/// The layout of every block of `class`.
fn block_layout(class: usize) -> Layout {
    // Sizes are powers of two up to MAX_SMALL and BLOCK_ALIGN is a power
    // of two: always a valid layout.
    Layout::from_size_align(1 << (MIN_SHIFT as usize + class), BLOCK_ALIGN)
        .expect("size classes are valid layouts")
}

// SAFETY: every block handed out is either a live block of the backing
// allocator with at least `layout`'s size and alignment (class blocks are
// `block_layout(class)`, which covers every layout of that class), or the
// backing allocator's own answer; a freed class block is only handed out
// again after it was popped from its list, so no block is handed out twice.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SizeClasses<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: the caller's contract is passed on unchanged.
            return unsafe { self.backing.alloc(layout) };
        };
        let head = self.free[class].get();
        if head.is_null() {
            // SAFETY: class layouts have a non-zero size.
            return unsafe { self.backing.alloc(block_layout(class)) };
        }
        // SAFETY: `head` is a freed block of this class; its first bytes
        // hold the next link, written by `dealloc` (blocks are 16-aligned).
        let next = unsafe { head.cast::<*mut u8>().read() };
        self.free[class].set(next);
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: a large block came from the backing allocator with
            // this layout.
            return unsafe { self.backing.dealloc(block, layout) };
        };
        // SAFETY: `block` is a block of this class (at least 16 bytes, 16
        // aligned) that the caller no longer uses: it can hold the link.
        unsafe { block.cast::<*mut u8>().write(self.free[class].get()) };
        self.free[class].set(block);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the
        // alignment, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // Still fits its block.
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: a large block came from the backing allocator.
            (None, None) => unsafe { self.backing.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: `new_layout` has a non-zero size (the caller's
                // contract); both blocks are valid for the bytes copied.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// The canonical ABI's allocation function, through Rust's global
/// allocator (see the module documentation): the router calls it for every
/// string and list it passes to a hook.
///
/// # Safety
///
/// Called by the component's host with the canonical ABI's arguments: a
/// power-of-two `align`, and `old_ptr`/`old_len` naming a live allocation
/// of that alignment when `old_len` is not zero.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        // Nothing to allocate: any well-aligned pointer will do.
        return align as *mut u8;
    }
    // SAFETY: the host passes a valid alignment and, when `old_len` is not
    // zero, a live allocation of `old_len` bytes with that alignment.
    let block = unsafe {
        if old_len == 0 {
            std::alloc::alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            let layout = Layout::from_size_align_unchecked(old_len, align);
            std::alloc::realloc(old_ptr, layout, new_len)
        }
    };
    if block.is_null() {
        // Out of memory (the instance's cap): trap, as wasi-libc's does.
        core::arch::wasm32::unreachable();
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn classes_cover_small_layouts() {
        let layout = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(2048, 16)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(2049, 1)), None);
        assert_eq!(class_of(layout(64, 32)), None);
        for class in 0..CLASSES {
            assert_eq!(class_of(block_layout(class)), Some(class));
        }
    }

    #[test]
    fn freed_blocks_are_reused_and_keep_their_contents_apart() {
        let heap = SizeClasses::new(System);
        let small = Layout::from_size_align(24, 8).unwrap();
        let large = Layout::from_size_align(10_000, 8).unwrap();
        unsafe {
            let a = heap.alloc(small);
            let b = heap.alloc(small);
            assert_ne!(a, b);
            a.write_bytes(0xaa, 24);
            b.write_bytes(0xbb, 24);
            assert_eq!(a.read(), 0xaa);
            heap.dealloc(a, small);
            let c = heap.alloc(small);
            assert_eq!(c, a, "the freed block of the class is reused");
            assert_eq!(b.add(23).read(), 0xbb);
            // Zeroed allocations are zero even when recycled.
            heap.dealloc(c, small);
            let zeroed = heap.alloc_zeroed(small);
            assert_eq!(zeroed, a);
            assert!((0..24).all(|i| zeroed.add(i).read() == 0));
            // Growing within the class keeps the block; past it, moves it
            // with its contents.
            let grown = heap.realloc(zeroed, small, 30);
            assert_eq!(grown, zeroed);
            grown.write_bytes(7, 30);
            let moved = heap.realloc(grown, Layout::from_size_align(30, 8).unwrap(), 5000);
            assert!((0..30).all(|i| moved.add(i).read() == 7));
            let back = heap.realloc(moved, Layout::from_size_align(5000, 8).unwrap(), 10);
            assert!((0..10).all(|i| back.add(i).read() == 7));
            heap.dealloc(back, Layout::from_size_align(10, 8).unwrap());
            let big = heap.alloc(large);
            assert!(!big.is_null());
            heap.dealloc(big, large);
            heap.dealloc(b, small);
        }
    }
}
