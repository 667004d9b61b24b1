# distutils: language = c++
"""The compiled kernels: typed loops over memoryviews, no Python objects inside.

Same names, signatures and results as ``xbatch/_kernels_numpy.py`` (the readable
reference). Arguments arrive validated by :mod:`xbatch.kernels`; the kernels still
guard themselves: index arithmetic cannot overflow for any int64 input, and before an
item's cells are written its bounds are asserted once (a few comparisons per item, kept
in the optimized build), so even a call that bypasses the wrappers raises instead of
reaching memory it does not own.
"""

from libc.stdint cimport INT32_MAX, INT64_MAX, int32_t, int64_t
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.string cimport memcpy, memmove
from libcpp.pair cimport pair
from libcpp.set cimport set as cpp_set
from libcpp.vector cimport vector

import numpy as np

cimport numpy as cnp

from . import _checks

cnp.import_array()

cdef extern from *:
    """
    #include <set>
    #include <utility>
    #include <cstdint>
    typedef std::set<std::pair<int64_t, int64_t> >::iterator xb_pair_iter;
    typedef std::set<int64_t>::iterator xb_int_iter;
    static inline int64_t xb_pair_first(xb_pair_iter it) { return it->first; }
    static inline int64_t xb_pair_second(xb_pair_iter it) { return it->second; }
    static inline int64_t xb_int_value(xb_int_iter it) { return *it; }
    """
    # Read C++ set iterators without going through Python objects.
    int64_t pair_first "xb_pair_first"(cpp_set[pair[int64_t, int64_t]].iterator) nogil
    int64_t pair_second "xb_pair_second"(cpp_set[pair[int64_t, int64_t]].iterator) nogil
    int64_t set_value "xb_int_value"(cpp_set[int64_t].iterator) nogil

ctypedef fused token_t:
    int32_t
    int64_t

cdef int64_t NO_BIN = -1
# Tree value of a bin that takes no item at all (lengths are >= 0).
cdef int64_t BLOCKED = -1
# Depth-first search stack: two entries per tree level are enough (2 * 64 levels).
DEF STACK_SIZE = 130
# Bins a packer materializes at first; it doubles them as they fill (up to num_bins), so
# memory follows the bins in use, not num_bins.
DEF INITIAL_BINS = 256


cdef inline int64_t round_up(int64_t value, int64_t alignment) noexcept nogil:
    # Callers keep value + alignment far below 2**63 (the wrapper bounds capacities and
    # clamps alignments to capacity + 1).
    return (value + alignment - 1) // alignment * alignment


cdef class BinPacker:
    """Online first-fit / best-fit placement into ``num_bins`` bins over ``F`` features.

    First fit keeps, per feature, a max-tree over the bins' free cells and walks down to
    the leftmost bin where every feature fits: O(log B) for one feature. Best fit with
    one feature keeps the bins ordered by (free cells, index) and takes the first with
    enough room: O(log B). Best fit over several features scans the bins.

    Only the first ``_allocated`` bins exist in memory; the others are empty. Bins in use
    are always a prefix, and the packer doubles ``_allocated`` whenever every allocated
    bin is in use, so an empty bin is always among the allocated ones and searching them
    gives the same bin as searching all ``num_bins``.

    One packer is not for two threads at once: ``place`` releases the GIL, so a call
    made while another is running raises ``RuntimeError`` instead of corrupting memory.
    """

    cdef readonly int64_t num_bins, num_features, max_items_per_bin
    cdef readonly bint best_fit
    cdef int64_t _num_leaves, _num_used_bins, _allocated
    cdef bint _busy
    cdef int64_t[::1] _capacities, _alignments, _counts, _item
    cdef int64_t[:, ::1] _used  # [F, _allocated]
    cdef int64_t[:, ::1] _tree  # [F, 2 * num_leaves]: max free cells below a node
    cdef cpp_set[pair[int64_t, int64_t]] _by_free  # (free cells, bin) of open bins
    cdef cpp_set[int64_t] _full_empty  # bins at the item cap whose used cells are 0

    def __init__(self, capacities, alignments, num_bins, max_items_per_bin, best_fit):
        self._capacities = np.array(capacities, dtype=np.int64)
        self._alignments = np.array(alignments, dtype=np.int64)
        self.num_features = self._capacities.shape[0]
        self.num_bins = num_bins
        self.max_items_per_bin = max_items_per_bin
        self.best_fit = best_fit
        self._item = np.zeros(self.num_features, dtype=np.int64)
        self._allocate(min(self.num_bins, INITIAL_BINS))
        self.reset()

    cdef int _allocate(self, int64_t allocated) except -1:
        """(Re)allocates the per-bin arrays for ``allocated`` bins, keeping the old bins."""
        cdef int64_t old = self._allocated  # 0 before the first call
        used = np.zeros((self.num_features, allocated), dtype=np.int64)
        counts = np.zeros(allocated, dtype=np.int64)
        if old:
            used[:, :old] = self._used
            counts[:old] = self._counts
        self._used, self._counts = used, counts
        self._allocated = allocated
        self._num_leaves = 1
        while self._num_leaves < allocated:
            self._num_leaves *= 2
        self._tree = np.zeros((self.num_features, 2 * self._num_leaves), dtype=np.int64)
        return 0

    cdef void _build_tree(self) noexcept nogil:
        """Every leaf from its bin, then every inner node; and the best-fit set's new bins."""
        cdef int64_t f, b, node
        for f in range(self.num_features):
            for b in range(self._num_leaves):
                self._tree[f, self._num_leaves + b] = (
                    BLOCKED if b >= self._allocated or self._is_full(b)
                    else self._capacities[f] - self._used[f, b]
                )
            for node in range(self._num_leaves - 1, 0, -1):
                self._tree[f, node] = max(self._tree[f, 2 * node], self._tree[f, 2 * node + 1])

    cdef int _grow(self) except -1:
        """Doubles the allocated bins (the new ones are empty); needs the GIL."""
        cdef int64_t old = self._allocated, b
        self._allocate(min(2 * old, self.num_bins))
        self._build_tree()
        if self.best_fit and self.num_features == 1:
            for b in range(old, self._allocated):
                self._by_free.insert(pair[int64_t, int64_t](self._capacities[0], b))
        return 0

    cdef inline bint _needs_growth(self) noexcept nogil:
        return self._num_used_bins == self._allocated and self._allocated < self.num_bins

    cdef int _enter(self) except -1:
        # Runs with the GIL held, so test-and-set is atomic between Python threads.
        if self._busy:
            _checks.raise_busy("BinPacker")
        self._busy = True
        return 0

    @property
    def capacities(self):
        return np.array(self._capacities)

    @property
    def alignments(self):
        return np.array(self._alignments)

    @property
    def used(self):
        """int64[F, num_bins]: next free cell of each bin per feature (a copy)."""
        used = np.zeros((self.num_features, self.num_bins), dtype=np.int64)
        used[:, :self._allocated] = self._used
        return used

    @property
    def counts(self):
        """int64[num_bins]: items held by each bin (a copy)."""
        counts = np.zeros(self.num_bins, dtype=np.int64)
        counts[:self._allocated] = self._counts
        return counts

    @property
    def num_used_bins(self):
        """Bins holding at least one item; they are always bins ``0 .. n-1``."""
        return self._num_used_bins

    def reset(self):
        """Empties every bin."""
        cdef int64_t b
        self._enter()
        try:
            self._used[:, :] = 0
            self._counts[:] = 0
            self._num_used_bins = 0
            self._by_free.clear()
            self._full_empty.clear()
            self._build_tree()
            if self.best_fit and self.num_features == 1:
                for b in range(self._allocated):
                    self._by_free.insert(pair[int64_t, int64_t](self._capacities[0], b))
        finally:
            self._busy = False

    cdef inline bint _is_full(self, int64_t b) noexcept nogil:
        return self.max_items_per_bin > 0 and self._counts[b] >= self.max_items_per_bin

    cdef inline bint _node_fits(self, int64_t node) noexcept nogil:
        cdef int64_t f
        for f in range(self.num_features):
            if self._tree[f, node] < self._item[f]:
                return False
        return True

    cdef int64_t _first_fit_one_feature(self) noexcept nogil:
        """Leftmost bin with room: one walk from the root, no backtracking."""
        cdef int64_t node = 1, length = self._item[0]
        if self._tree[0, 1] < length:
            return NO_BIN
        while node < self._num_leaves:
            node *= 2
            if self._tree[0, node] < length:
                node += 1
        return node - self._num_leaves

    cdef int64_t _first_fit(self) noexcept nogil:
        """Leftmost bin where every feature fits: depth-first, left child first.

        A node's per-feature maxima may come from different bins, so a node that
        passes can still hold no fitting bin; the search then backtracks.
        """
        cdef int64_t stack[STACK_SIZE]
        cdef int64_t top = 1, node
        stack[0] = 1
        while top > 0:
            top -= 1
            node = stack[top]
            if not self._node_fits(node):
                continue
            if node >= self._num_leaves:
                return node - self._num_leaves
            stack[top] = 2 * node + 1
            stack[top + 1] = 2 * node
            top += 2
        return NO_BIN

    cdef int64_t _best_fit_one_feature(self) noexcept nogil:
        cdef int64_t length = self._item[0]
        cdef int64_t capacity = self._capacities[0]
        cdef int64_t best = NO_BIN, best_score = -1, candidate
        cdef cpp_set[pair[int64_t, int64_t]].iterator it
        it = self._by_free.lower_bound(pair[int64_t, int64_t](length, -1))
        if it != self._by_free.end():
            best = pair_second(it)
            best_score = capacity - pair_first(it)
        # grain lets a bin at the item cap take an item when its used cells and the
        # item's length are all zero; such a bin scores 0.
        if length == 0 and not self._full_empty.empty():
            candidate = set_value(self._full_empty.begin())
            if best == NO_BIN or (best_score == 0 and candidate < best):
                best = candidate
        return best

    cdef int64_t _best_fit_scan(self) noexcept nogil:
        cdef int64_t b, f, score, best = NO_BIN, best_score = -1
        cdef int64_t extra
        cdef bint fits
        for b in range(self._allocated):
            fits = True
            score = 0
            extra = 1 if self._is_full(b) else 0
            for f in range(self.num_features):
                if self._used[f, b] + self._item[f] + extra * self._capacities[f] > self._capacities[f]:
                    fits = False
                    break
                score += self._used[f, b]
            if fits and score > best_score:
                best_score = score
                best = b
        return best

    cdef void _put(self, int64_t b) noexcept nogil:
        cdef int64_t f, node, free
        cdef bint one_feature_best = self.best_fit and self.num_features == 1
        cdef bint full
        if one_feature_best and not self._is_full(b):
            self._by_free.erase(pair[int64_t, int64_t](self._capacities[0] - self._used[0, b], b))
        for f in range(self.num_features):
            self._used[f, b] = round_up(self._used[f, b] + self._item[f], self._alignments[f])
        self._counts[b] += 1
        if b + 1 > self._num_used_bins:
            self._num_used_bins = b + 1
        full = self._is_full(b)
        if one_feature_best:
            if not full:
                self._by_free.insert(pair[int64_t, int64_t](self._capacities[0] - self._used[0, b], b))
            elif self._used[0, b] == 0:
                self._full_empty.insert(b)
            return
        if self.best_fit:
            return
        for f in range(self.num_features):
            free = BLOCKED if full else self._capacities[f] - self._used[f, b]
            node = self._num_leaves + b
            self._tree[f, node] = free
            node //= 2
            while node >= 1:
                free = max(self._tree[f, 2 * node], self._tree[f, 2 * node + 1])
                if self._tree[f, node] == free:
                    break  # the maxima above do not change either
                self._tree[f, node] = free
                node //= 2

    cdef int64_t _place_item(self) noexcept nogil:
        cdef int64_t b
        if not self.best_fit:
            b = self._first_fit_one_feature() if self.num_features == 1 else self._first_fit()
        elif self.num_features == 1:
            b = self._best_fit_one_feature()
        else:
            b = self._best_fit_scan()
        # The kernel's own bounds assertion: a search never leaves the allocated bins.
        if b >= self._allocated or b < NO_BIN:
            return NO_BIN - 1
        if b != NO_BIN:
            self._put(b)
        return b

    def place_one(self, lengths):
        """Places one item (F lengths: a tuple or list of ints, or an int when F is 1);
        returns its bin, or -1 if none fits. Checked by ``_checks.item_lengths``."""
        cdef int64_t f, b, value
        cdef int overflow = 0
        cdef bint ok
        self._enter()
        try:
            ok = False
            # Fast paths: an int for one feature, or a tuple of F Python ints (what the
            # packers pass), within capacity.
            if type(lengths) is int and self.num_features == 1:
                value = PyLong_AsLongLongAndOverflow(lengths, &overflow)
                ok = not overflow and 0 <= value <= self._capacities[0]
                self._item[0] = value
            elif type(lengths) is tuple and len(lengths) == self.num_features:
                ok = True
                for f in range(self.num_features):
                    element = (<tuple>lengths)[f]
                    if type(element) is not int:
                        ok = False
                        break
                    value = PyLong_AsLongLongAndOverflow(element, &overflow)
                    if overflow or value < 0 or value > self._capacities[f]:
                        ok = False
                        break
                    self._item[f] = value
            if not ok:
                checked = _checks.item_lengths(lengths, self.capacities)
                for f in range(self.num_features):
                    self._item[f] = checked[f]
            b = self._place_item()
            if b < NO_BIN:
                _checks.raise_internal("BinPacker.place_one")
            if self._needs_growth():
                self._grow()
            return b
        finally:
            self._busy = False

    def place(self, lengths, out_bins):
        """Places items in order until one fits no bin.

        Args:
          lengths: int64[n, F], C-contiguous.
          out_bins: int64[n]; ``out_bins[i]`` receives item ``i``'s bin.

        Returns:
          How many items were placed (a prefix of ``lengths``).

        Raises:
          ValueError: at the first item with a length outside ``0..capacity`` (an item
            no empty bin takes), after placing the items before it -- as grain does.
          RuntimeError: another thread is using this packer.
        """
        _checks.check_place_args(lengths, out_bins, self.capacities)
        cdef const int64_t[:, ::1] items = lengths
        cdef int64_t[::1] bins = out_bins
        cdef int64_t i = 0, f, b = 0, n = items.shape[0], placed = n, bad = -1
        cdef bint grow
        self._enter()
        try:
            while True:
                grow = False
                with nogil:
                    while i < n:
                        for f in range(self.num_features):
                            self._item[f] = items[i, f]
                            if items[i, f] < 0 or items[i, f] > self._capacities[f]:
                                bad = i
                        if bad >= 0:
                            break
                        b = self._place_item()
                        if b < 0:
                            placed = i
                            break
                        bins[i] = b
                        i += 1
                        if self._needs_growth():
                            grow = True
                            break
                if not grow:
                    break
                self._grow()
        finally:
            self._busy = False
        if b < NO_BIN:
            _checks.raise_internal("BinPacker.place")
        if bad >= 0:
            _checks.raise_bad_item_at(bad, lengths, self.capacities)
        return placed


cdef inline int64_t _advance(int64_t end, int64_t alignment, int64_t row_length) noexcept nogil:
    """Where a row's next item starts after one ending at ``end`` (<= row_length): ``end``
    rounded up to a multiple of ``alignment``, or ``row_length + 1`` (no item fits, not
    even an empty one) when that lies past the row. Cannot overflow for any alignment."""
    cdef int64_t rest = end % alignment
    if rest == 0:
        return end
    if alignment - rest > row_length - end:
        return row_length + 1
    return end + (alignment - rest)


cdef int64_t _first_overflow(
    const int64_t[::1] lengths,
    const int64_t[::1] bins,
    int64_t alignment,
    int64_t rows,
    int64_t row_length,
    int64_t num_values,
    vector[int64_t]& cursor,
) noexcept nogil:
    """Index of the first item that would leave its row (or the values), else -1.

    Overflow-safe for any lengths: it compares lengths with the room left (cursors stay
    in 0..row_length + 1) instead of adding them up.
    """
    cdef int64_t i, b, n, source = 0
    for i in range(lengths.shape[0]):
        b = bins[i]
        n = lengths[i]
        if b < 0 or b >= rows or n < 0 or n > row_length - cursor[b] or n > num_values - source:
            return i
        source += n
        cursor[b] = _advance(cursor[b] + n, alignment, row_length)
    return -1


cdef inline void _fill(token_t* cells, int64_t count, token_t value) noexcept nogil:
    cdef int64_t j
    for j in range(count):
        cells[j] = value


cdef inline int64_t _next_start(int64_t end, int64_t alignment, int64_t row_length) noexcept nogil:
    cdef int64_t aligned = _advance(end, alignment, row_length)
    return aligned if aligned < row_length else row_length


cdef inline bint _outside(int64_t b, int64_t start, int64_t n, int64_t rows, int64_t row_length) noexcept nogil:
    """The bounds assertion kept in the optimized build: item cells [start, start + n) of
    row b lie outside the output. One comparison chain per item (not per cell)."""
    return b < 0 or b >= rows or start < 0 or n < 0 or n > row_length - start


def _check_alignment(int64_t alignment):
    if alignment < 1:
        raise ValueError(f"alignment: expected an integer >= 1, got {alignment}")


def pack_rows(
    const int64_t[::1] lengths,
    const int64_t[::1] bins,
    int64_t alignment,
    int32_t[:, ::1] out_segment_ids,
    int32_t[:, ::1] out_positions,
):
    """Writes every cell of the rows: 1-based segment ids and per-item positions of the
    placed items, 0 wherever no item lies.

    Returns -1 on success, else the index of the first item that does not fit its row
    (nothing is written then).
    """
    cdef int64_t rows = out_segment_ids.shape[0], row_length = out_segment_ids.shape[1]
    cdef vector[int64_t] cursor = vector[int64_t](rows, 0)
    cdef vector[int32_t] items_in_row = vector[int32_t](rows, 0)
    cdef int64_t i, j, b, start, end, failed, bad = -1
    cdef int32_t segment
    _check_alignment(alignment)
    if out_positions.shape[0] != rows or out_positions.shape[1] != row_length:
        raise ValueError("out_positions: expected the shape of out_segment_ids")
    if row_length > INT32_MAX or lengths.shape[0] > INT32_MAX:
        raise ValueError("pack_rows: positions and segment ids must fit int32")
    with nogil:
        failed = _first_overflow(lengths, bins, alignment, rows, row_length, INT64_MAX, cursor)
        if failed < 0:
            for b in range(rows):
                cursor[b] = 0
            for i in range(lengths.shape[0]):
                b = bins[i]
                start = cursor[b] if 0 <= b < rows else -1
                if _outside(b, start, lengths[i], rows, row_length):
                    bad = i
                    break
                end = start + lengths[i]
                items_in_row[b] += 1
                segment = items_in_row[b]
                for j in range(lengths[i]):
                    out_segment_ids[b, start + j] = segment
                    out_positions[b, start + j] = <int32_t>j
                cursor[b] = _next_start(end, alignment, row_length)
                _fill(&out_segment_ids[b, 0] + end, cursor[b] - end, <int32_t>0)
                _fill(&out_positions[b, 0] + end, cursor[b] - end, <int32_t>0)
            for b in range(rows):
                if cursor[b] < row_length:
                    _fill(&out_segment_ids[b, cursor[b]], row_length - cursor[b], <int32_t>0)
                    _fill(&out_positions[b, cursor[b]], row_length - cursor[b], <int32_t>0)
    if bad >= 0:
        _checks.raise_internal("pack_rows")
    return failed


cdef void _pad_rest(token_t[:, ::1] out, vector[int64_t]& cursor, token_t padding) noexcept nogil:
    """Fills every row from its cursor to its end with ``padding``."""
    cdef int64_t b, row_length = out.shape[1]
    for b in range(out.shape[0]):
        if cursor[b] < row_length:
            _fill(&out[b, cursor[b]], row_length - cursor[b], padding)


def scatter_rows(
    const token_t[::1] values,
    const int64_t[::1] lengths,
    const int64_t[::1] bins,
    int64_t alignment,
    token_t[:, ::1] out_values,
    token_t padding,
):
    """Writes every cell of the rows: the items (``values``, back to back) where they
    are placed, ``padding`` elsewhere.

    Returns -1 on success, else the index of the first item that does not fit its row.
    """
    cdef int64_t rows = out_values.shape[0], row_length = out_values.shape[1]
    cdef int64_t num_values = values.shape[0]
    cdef vector[int64_t] cursor = vector[int64_t](rows, 0)
    cdef int64_t i, b, start, end, source = 0, failed, bad = -1
    _check_alignment(alignment)
    with nogil:
        failed = _first_overflow(lengths, bins, alignment, rows, row_length, num_values, cursor)
        if failed < 0:
            for b in range(rows):
                cursor[b] = 0
            for i in range(lengths.shape[0]):
                b = bins[i]
                start = cursor[b] if 0 <= b < rows else -1
                if _outside(b, start, lengths[i], rows, row_length) or lengths[i] > num_values - source:
                    bad = i
                    break
                end = start + lengths[i]
                if lengths[i] > 0:
                    memcpy(&out_values[b, start], &values[source], lengths[i] * sizeof(token_t))
                source += lengths[i]
                cursor[b] = _next_start(end, alignment, row_length)
                _fill(&out_values[b, 0] + end, cursor[b] - end, padding)
            _pad_rest(out_values, cursor, padding)
    if bad >= 0:
        _checks.raise_internal("scatter_rows")
    return failed


def scatter_item_rows(
    list items,
    const int64_t[::1] lengths,
    const int64_t[::1] bins,
    int64_t alignment,
    token_t[:, ::1] out_values,
    token_t padding,
):
    """As :func:`scatter_rows`, reading each item from its own array in ``items``.

    Saves joining the items first. Every item must be a 1-d C-contiguous array of
    ``out_values``' dtype in native byte order and of its length; the loop holds the GIL
    because it reads the list, but touches no Python object beyond that.

    Returns -1 on success, the index of the first item that does not fit its row
    (nothing written then), or ``-2 - i`` when item ``i`` is not such an array (callers
    then join the items themselves, casting as NumPy does, and rewrite the rows whole).

    Raises:
      ValueError: an item (before the first that is not such an array) shares memory
        with ``out_values``; the rows are then partly written.
    """
    cdef int64_t rows = out_values.shape[0], row_length = out_values.shape[1]
    cdef vector[int64_t] cursor = vector[int64_t](rows, 0)
    cdef int64_t i, b, start, end, failed, n = lengths.shape[0]
    cdef int type_number = np.dtype(np.asarray(out_values).dtype).num
    cdef char* out_first = <char*>&out_values[0, 0] if rows and row_length else NULL
    cdef char* out_end = out_first + rows * row_length * sizeof(token_t)
    cdef char* data
    cdef cnp.ndarray item
    _check_alignment(alignment)
    if len(items) != n:
        raise ValueError(f"items: expected {n} arrays, one per item, got {len(items)}")
    failed = _first_overflow(lengths, bins, alignment, rows, row_length, INT64_MAX, cursor)
    if failed >= 0:
        return failed
    for b in range(rows):
        cursor[b] = 0
    for i in range(n):
        obj = items[i]
        if not cnp.PyArray_CheckExact(obj):
            return -2 - i
        item = <cnp.ndarray>obj
        if (
            cnp.PyArray_TYPE(item) != type_number
            or not cnp.PyArray_ISNOTSWAPPED(item)
            or cnp.PyArray_NDIM(item) != 1
            or cnp.PyArray_DIM(item, 0) != lengths[i]
            or not cnp.PyArray_IS_C_CONTIGUOUS(item)
        ):
            return -2 - i
        data = <char*>cnp.PyArray_DATA(item)
        if lengths[i] > 0 and data < out_end and out_first < data + lengths[i] * sizeof(token_t):
            _checks.raise_overlap(f"values (item {i})", "out_values")
        b = bins[i]
        start = cursor[b]
        if _outside(b, start, lengths[i], rows, row_length):
            _checks.raise_internal("scatter_item_rows")
        end = start + lengths[i]
        if lengths[i] > 0:
            memcpy(&out_values[b, start], data, lengths[i] * sizeof(token_t))
        cursor[b] = _next_start(end, alignment, row_length)
        _fill(&out_values[b, 0] + end, cursor[b] - end, padding)
    _pad_rest(out_values, cursor, padding)
    return -1


def document_borders(const token_t[:, ::1] segmentation):
    """bool[B, L]: True at column 0 and wherever the segment id differs from the previous."""
    cdef Py_ssize_t rows = segmentation.shape[0], length = segmentation.shape[1], r, c
    borders = np.ones((rows, length), dtype=bool)
    cdef unsigned char[:, ::1] out = borders.view(np.uint8)
    with nogil:
        for r in range(rows):
            for c in range(1, length):
                out[r, c] = segmentation[r, c] != segmentation[r, c - 1]
    return borders


def shift_right(const token_t[:, ::1] rows, token_t fill, token_t[:, ::1] out):
    """``out`` [B, L] := ``rows`` moved one cell right along L, ``fill`` in column 0."""
    cdef Py_ssize_t n = rows.shape[0], length = rows.shape[1], r
    if out.shape[0] != n or out.shape[1] != length:
        raise ValueError("out: expected the shape of rows")
    if length == 0:
        return np.asarray(out)
    with nogil:
        for r in range(n):
            out[r, 0] = fill
            if length > 1:
                memmove(&out[r, 1], &rows[r, 0], (length - 1) * sizeof(token_t))
    return np.asarray(out)


def shift_left(const token_t[:, ::1] rows, token_t fill, token_t[:, ::1] out):
    """``out`` [B, L] := ``rows`` moved one cell left along L, ``fill`` in the last column."""
    cdef Py_ssize_t n = rows.shape[0], length = rows.shape[1], r
    if out.shape[0] != n or out.shape[1] != length:
        raise ValueError("out: expected the shape of rows")
    if length == 0:
        return np.asarray(out)
    with nogil:
        for r in range(n):
            if length > 1:
                memmove(&out[r, 0], &rows[r, 1], (length - 1) * sizeof(token_t))
            out[r, length - 1] = fill
    return np.asarray(out)


# ---------------------------------------------------------------------------------------
# Attention metadata (issue 13): per-row segment lengths and offsets, flat cu_seqlens


def attention_metadata(
    const token_t[:, ::1] segmentation,
    int64_t max_segments,
    int32_t[:, ::1] out_lengths,
    int32_t[:, ::1] out_offsets,
    int32_t[::1] out_cu_seqlens,
):
    """Writes the segments of every row: lengths and start columns (-1 where a row has
    fewer than ``max_segments``) and the cumulative lengths over all rows (the tail
    repeats the total).

    A segment is a run of one non-zero id; the ``k``-th run of a row (from 1) must have
    id ``k``. Returns ``(status, row, column, max_seqlen)``: status 0 on success (row and
    column -1), else the first run start in row-major order that breaks a rule: 1 when it
    is segment ``max_segments + 1`` of its row, 2 when its id is not its run number
    (max_seqlen is then 0 and the outputs are partly written).
    """
    cdef Py_ssize_t rows = segmentation.shape[0], length = segmentation.shape[1]
    cdef Py_ssize_t r, c
    cdef int64_t n, start, value, previous, cursor = 0, total = 0, longest = 0, run
    cdef int status = 0
    cdef Py_ssize_t bad_row = -1, bad_column = -1
    if max_segments < 1:
        raise ValueError(f"max_segments: expected an integer >= 1, got {max_segments}")
    # Python ints: rows * max_segments must not wrap around before the comparison.
    if (
        out_lengths.shape[0] != rows or out_lengths.shape[1] != max_segments
        or out_offsets.shape[0] != rows or out_offsets.shape[1] != max_segments + 1
        or out_cu_seqlens.shape[0] != int(rows) * int(max_segments) + 1
    ):
        raise ValueError("out_lengths, out_offsets, out_cu_seqlens: expected shapes "
                         "[rows, max_segments], [rows, max_segments + 1], [rows * max_segments + 1]")
    with nogil:
        out_cu_seqlens[0] = 0
        for r in range(rows):
            _fill(&out_lengths[r, 0], max_segments, <int32_t>-1)
            _fill(&out_offsets[r, 0], max_segments + 1, <int32_t>-1)
            n = 0
            start = 0
            previous = 0
            for c in range(length + 1):
                # One step past the row's end closes its last run.
                value = segmentation[r, c] if c < length else 0
                if value == previous:
                    continue
                if previous != 0:
                    run = c - start
                    out_lengths[r, n - 1] = <int32_t>run
                    total += run
                    cursor += 1
                    out_cu_seqlens[cursor] = <int32_t>total
                    if run > longest:
                        longest = run
                if value != 0:
                    n += 1
                    if value != n:
                        status = 2
                    elif n > max_segments:
                        status = 1
                    if status != 0:
                        bad_row = r
                        bad_column = c
                        break
                    out_offsets[r, n - 1] = <int32_t>c
                    start = c
                previous = value
            if status != 0:
                break
        if status == 0:
            _fill(&out_cu_seqlens[0] + cursor + 1, rows * max_segments - cursor, <int32_t>total)
    return status, bad_row, bad_column, (longest if status == 0 else 0)

# Corpus sources (issue 12): grain's index shuffle, vectorized; gathering documents.
# ---------------------------------------------------------------------------------------

from libc.stdint cimport int8_t, int16_t, uint8_t, uint16_t, uint32_t, uint64_t

ctypedef fused corpus_token_t:
    uint8_t
    int8_t
    int16_t
    uint16_t
    int32_t
    uint32_t
    int64_t
    uint64_t


cdef inline uint64_t simon_rotl(uint64_t x, int r, int w, uint64_t mask) noexcept nogil:
    # r == w rotates by a full word: (x << w) & mask == 0 and x >> 0 == x, as std::bitset does.
    return ((x << r) | (x >> (w - r))) & mask


cdef inline uint64_t simon_f(uint64_t x, int w, uint64_t mask) noexcept nogil:
    return (simon_rotl(x, 1, w, mask) & simon_rotl(x, 8, w, mask)) ^ simon_rotl(x, 2, w, mask)


def index_shuffle(const int64_t[::1] indices, uint64_t max_index, const uint32_t[::1] keys,
                  int word_bits, int64_t[::1] out):
    """``out[i]`` := grain's ``index_shuffle(indices[i], max_index, seed, rounds)``.

    ``keys`` are the round keys (``std::seed_seq{seed}``, one per round, even count) and
    ``word_bits`` half the Simon block size, both from :mod:`xbatch.kernels`. Returns -1,
    or the position of the first index outside ``[0, max_index]`` (nothing is written
    from there on).
    """
    cdef Py_ssize_t n = indices.shape[0], i, k, rounds = keys.shape[0]
    cdef uint64_t mask, value, left, right
    cdef Py_ssize_t failed = -1
    if out.shape[0] < n:
        raise ValueError("out: expected at least one cell per index")
    if word_bits < 8 or word_bits > 32 or rounds % 2:
        raise ValueError("word_bits must lie in [8, 32] and keys come in pairs")
    mask = (<uint64_t>1 << word_bits) - 1
    with nogil:
        for i in range(n):
            if indices[i] < 0 or <uint64_t>indices[i] > max_index:
                failed = i
                break
            if max_index == 0:
                out[i] = 0
                continue
            value = <uint64_t>indices[i]
            while True:
                left = (value >> word_bits) & mask
                right = value & mask
                k = 0
                while k < rounds:
                    left ^= simon_f(right, word_bits, mask)
                    left ^= keys[k] & mask
                    right ^= simon_f(left, word_bits, mask)
                    right ^= keys[k + 1] & mask
                    k += 2
                value = (left << word_bits) | right
                if value <= max_index:
                    break
            out[i] = <int64_t>value
    return failed


def gather_ranges(const corpus_token_t[::1] tokens, const int64_t[::1] starts,
                  const int64_t[::1] ends, int32_t[::1] out):
    """Copies ``tokens[starts[i]:ends[i]]`` for every ``i``, back to back, into ``out`` as int32.

    Returns -1; or ``i`` >= 0, the first range holding a token id outside int32 (wide
    dtypes only); or ``-2 - i`` for the first range ``i`` outside ``tokens`` or ``out``
    (the wrapper rules both out; the loop checks anyway).
    """
    cdef Py_ssize_t n = starts.shape[0], size = tokens.shape[0], capacity = out.shape[0]
    cdef Py_ssize_t i, j, start, length, position = 0, failed = -1
    if ends.shape[0] != n:
        raise ValueError("ends: expected one end per start")
    with nogil:
        for i in range(n):
            start = starts[i]
            length = ends[i] - start
            if start < 0 or length < 0 or start + length > size or position + length > capacity:
                failed = -2 - i
                break
            if corpus_token_t is int32_t:
                if length:
                    memcpy(&out[position], &tokens[start], length * sizeof(int32_t))
            elif corpus_token_t is uint32_t or corpus_token_t is uint64_t:
                for j in range(length):
                    if tokens[start + j] > 2147483647:
                        failed = i
                        break
                    out[position + j] = <int32_t>tokens[start + j]
            elif corpus_token_t is int64_t:
                for j in range(length):
                    if tokens[start + j] > 2147483647 or tokens[start + j] < -2147483648:
                        failed = i
                        break
                    out[position + j] = <int32_t>tokens[start + j]
            else:
                for j in range(length):
                    out[position + j] = tokens[start + j]
            if failed != -1:
                break
            position += length
    return failed


# Rolling best fit: bins that stay open (xbatch.packing.rolling)
# ---------------------------------------------------------------------------------------

from libc.stdint cimport uint64_t
from libcpp.algorithm cimport sort as cpp_sort
from cython.operator cimport dereference as deref, preincrement as inc

ctypedef pair[int64_t, int64_t] i64pair
ctypedef cpp_set[i64pair].iterator i64pair_iter

cdef extern from *:
    """
    #include <cstdint>
    #if defined(_MSC_VER)
    #include <intrin.h>
    static inline int xb_lowest_bit(uint64_t w) { unsigned long i; _BitScanForward64(&i, w); return (int)i; }
    static inline int xb_highest_bit(uint64_t w) { unsigned long i; _BitScanReverse64(&i, w); return (int)i; }
    #else
    static inline int xb_lowest_bit(uint64_t w) { return __builtin_ctzll(w); }
    static inline int xb_highest_bit(uint64_t w) { return 63 - __builtin_clzll(w); }
    #endif
    """
    # Index of the lowest / highest set bit of a non-zero word.
    int lowest_bit "xb_lowest_bit"(uint64_t) nogil
    int highest_bit "xb_highest_bit"(uint64_t) nogil


cdef uint64_t ALL_BITS = 0xFFFFFFFFFFFFFFFF
# Bounds the constructor checks (xbatch.kernels checks them first, with clear messages):
# per-cell tables of the capacity, int32 bin and buffer-node indices.
cdef int64_t MAX_ROLLING_CAPACITY = 1 << 24
cdef int64_t MAX_ROLLING_BINS_C = 1 << 20
cdef int64_t MAX_ROLLING_BUFFER = 1 << 30


cdef class _BitTree:
    """A set of integers in [0, size): 64-ary levels of bit words, so membership changes
    and "smallest member >= i" / "largest member <= i" take O(log64 size) word reads
    (3 for 2**18 values), whatever the number of members."""

    cdef vector[vector[uint64_t]] levels  # levels[0] bit i: i is a member; levels[k + 1] bit j: word j of levels[k] != 0
    cdef int64_t size

    def __cinit__(self, int64_t size):
        cdef int64_t words = (size + 63) >> 6
        self.size = size
        while True:
            self.levels.push_back(vector[uint64_t](words, 0))
            if words == 1:
                break
            words = (words + 63) >> 6

    cdef inline void add(self, int64_t i) noexcept nogil:
        cdef size_t k
        for k in range(self.levels.size()):
            self.levels[k][i >> 6] |= (<uint64_t>1) << (i & 63)
            i >>= 6

    cdef inline void discard(self, int64_t i) noexcept nogil:
        cdef size_t k
        for k in range(self.levels.size()):
            self.levels[k][i >> 6] &= ~((<uint64_t>1) << (i & 63))
            if self.levels[k][i >> 6]:
                return  # the word above still has members
            i >>= 6

    cdef inline int64_t next_at_or_after(self, int64_t i) noexcept nogil:
        """The smallest member >= i (i >= 0), or -1."""
        cdef size_t k = 0
        cdef int64_t word_index
        cdef uint64_t word
        while True:
            word_index = i >> 6
            if word_index >= <int64_t>self.levels[k].size():
                return -1
            word = self.levels[k][word_index] & (ALL_BITS << (i & 63))
            if word:
                i = (word_index << 6) + lowest_bit(word)
                break
            k += 1
            if k == self.levels.size():
                return -1
            i = word_index + 1
        while k > 0:
            k -= 1
            i = (i << 6) + lowest_bit(self.levels[k][i])
        return i

    cdef inline int64_t last_at_or_before(self, int64_t i) noexcept nogil:
        """The largest member <= i (i < size), or -1."""
        cdef size_t k = 0
        cdef int64_t word_index
        cdef uint64_t word
        while i >= 0:
            word_index = i >> 6
            word = self.levels[k][word_index] & (ALL_BITS >> (63 - (i & 63)))
            if word:
                i = (word_index << 6) + highest_bit(word)
                while k > 0:
                    k -= 1
                    i = (i << 6) + highest_bit(self.levels[k][i])
                return i
            k += 1
            if k == self.levels.size():
                return -1
            i = word_index - 1
        return -1


cdef class RollingPacker:
    """Online best fit whose bins stay open; see ``xbatch/_kernels_numpy.py`` for the rule.

    Flat structures, none of them per item allocated: bins are bucketed by the room they
    have left (cells, 0..capacity), buffered items by length, and a :class:`_BitTree` over
    each says which buckets are non-empty. Best fit is then "the smallest room >= length",
    the item to move "the largest length <= room": O(log64 capacity) word reads each,
    independent of the number of bins and of the buffer size. Buckets are intrusive
    lists (the last bin or item in is the first out); empty bins are a bit tree of bin
    indices (lowest first).
    """

    cdef readonly int64_t capacity, num_bins, buffer_size, buffer_wait, bin_wait, max_items, clock
    # Bins: room left, items, opening clock (-1: empty), items in placement order.
    cdef vector[int64_t] _room, _count, _opened
    cdef vector[vector[i64pair]] _contents  # per bin: (id, length)
    cdef _BitTree _rooms  # rooms (0..capacity) some bin has
    cdef _BitTree _empty_bins  # bins holding nothing (room == capacity)
    cdef vector[int32_t] _room_head  # per room < capacity: the last bin in, or -1
    cdef vector[int32_t] _bin_next, _bin_prev  # the room lists, doubly linked
    cdef vector[int32_t] _open_next, _open_prev  # open bins by opening clock, doubly linked
    cdef int32_t _open_head, _open_tail
    cdef int64_t _num_empty
    cdef vector[int64_t] _expired  # scratch: bins whose wait ends at this push
    # Buffer: nodes of a pool (free ones chained through _by_length_next).
    cdef vector[int64_t] _node_length, _node_id
    cdef vector[int32_t] _by_length_next, _by_length_prev  # per length, the newest first
    cdef vector[int32_t] _age_next, _age_prev  # all of them, the oldest first
    cdef vector[int32_t] _length_head  # per length (1..capacity): the newest node, or -1
    cdef _BitTree _lengths  # lengths some buffered item has
    cdef int32_t _age_head, _age_tail, _free_node
    cdef int64_t _buffered
    cdef vector[int64_t] _out_items, _out_row_sizes
    cdef bint _busy

    cdef int _enter(self) except -1:
        # Runs with the GIL held, so test-and-set is atomic between Python threads.
        if self._busy:
            _checks.raise_busy("RollingPacker")
        self._busy = True
        return 0

    def __cinit__(self, int64_t capacity, int64_t num_bins, int64_t buffer_size, int64_t buffer_wait,
                  int64_t bin_wait, int64_t max_items):
        # The wrapper (xbatch.kernels.RollingPacker) validates these; the bounds that keep
        # memory access in range are checked here too.
        if not 1 <= capacity <= MAX_ROLLING_CAPACITY or not 1 <= num_bins <= MAX_ROLLING_BINS_C:
            raise ValueError(f"capacity {capacity} or num_bins {num_bins} out of range")
        if not 0 <= buffer_size <= MAX_ROLLING_BUFFER or buffer_wait < 0 or bin_wait < 1 or max_items < 0:
            raise ValueError("buffer_size, buffer_wait, bin_wait or max_items out of range")
        self.capacity = capacity
        self.num_bins = num_bins
        self.buffer_size = buffer_size
        self.buffer_wait = buffer_wait
        self.bin_wait = bin_wait
        self.max_items = max_items  # 0: no cap
        self._room.assign(num_bins, capacity)
        self._count.assign(num_bins, 0)
        self._opened.assign(num_bins, -1)
        self._contents.resize(num_bins)
        self._rooms = _BitTree(capacity + 1)
        self._empty_bins = _BitTree(num_bins)
        self._room_head.assign(capacity, -1)
        self._bin_next.assign(num_bins, -1)
        self._bin_prev.assign(num_bins, -1)
        self._open_next.assign(num_bins, -1)
        self._open_prev.assign(num_bins, -1)
        self._length_head.assign(capacity + 1, -1)
        self._lengths = _BitTree(capacity + 1)
        self._free_node = -1
        self._buffered = 0
        self._age_head = self._age_tail = -1
        self._open_head = self._open_tail = -1
        cdef int64_t b
        for b in range(num_bins):
            self._empty_bins.add(b)
        self._num_empty = num_bins
        self._rooms.add(capacity)
        self.clock = 0

    cdef void _reset(self) noexcept nogil:
        """Back to the state after construction, keeping the memory (buffer and bins are
        empty already: drain emptied them)."""
        self.clock = 0
        self._free_node = -1
        self._node_length.clear()
        self._node_id.clear()
        self._by_length_next.clear()
        self._by_length_prev.clear()
        self._age_next.clear()
        self._age_prev.clear()

    @property
    def num_held(self):
        """Items pushed and not yet in an emitted row."""
        cdef int64_t b, count
        self._enter()
        count = self._buffered
        for b in range(self.num_bins):
            count += self._count[b]
        self._busy = False
        return count

    def held_ids(self):
        """int64[num_held]: the ids of the items not yet emitted, ascending."""
        cdef vector[int64_t] ids
        cdef int64_t b, i
        cdef int32_t node
        self._enter()
        node = self._age_head
        while node != -1:
            ids.push_back(self._node_id[node])
            node = self._age_next[node]
        for b in range(self.num_bins):
            for i in range(<int64_t>self._contents[b].size()):
                ids.push_back(self._contents[b][i].first)
        cpp_sort(ids.begin(), ids.end())
        self._busy = False
        return _to_numpy(ids)

    def push(self, const int64_t[::1] lengths):
        """Pushes items in order; returns the index of the first with a length outside
        1..capacity (not pushed, nor any after it), or -1."""
        cdef Py_ssize_t i
        cdef int64_t bad = -1
        self._enter()
        try:
            with nogil:
                for i in range(lengths.shape[0]):
                    if lengths[i] < 1 or lengths[i] > self.capacity:
                        bad = i
                        break
                    self._push_one(lengths[i])
        finally:
            self._busy = False
        return bad

    def drain(self):
        """Places every held item best-fit-decreasing into new rows, emits them and
        starts over (the next id is 0)."""
        self._enter()
        try:
            with nogil:
                self._drain()
        finally:
            self._busy = False

    cdef void _drain(self) noexcept nogil:
        # Once per checkpoint interval: ordered sets are fine here.
        cdef vector[i64pair] items  # (-length, id)
        cdef vector[vector[i64pair]] rows
        cdef vector[int64_t] room
        cdef cpp_set[i64pair] by_room
        cdef i64pair_iter it
        cdef int64_t b, i, length, row
        cdef int32_t node = self._age_head
        while node != -1:
            items.push_back(i64pair(-self._node_length[node], self._node_id[node]))
            node = self._age_next[node]
        for b in range(self.num_bins):
            for i in range(<int64_t>self._contents[b].size()):
                items.push_back(i64pair(-self._contents[b][i].second, self._contents[b][i].first))
        cpp_sort(items.begin(), items.end())
        for i in range(<int64_t>items.size()):
            length = -items[i].first
            it = by_room.lower_bound(i64pair(length, -1))
            if it == by_room.end():
                row = rows.size()
                rows.push_back(vector[i64pair]())
                room.push_back(self.capacity)
            else:
                row = deref(it).second
                by_room.erase(it)
            room[row] -= length
            rows[row].push_back(i64pair(items[i].second, length))
            if self.max_items == 0 or <int64_t>rows[row].size() < self.max_items:
                by_room.insert(i64pair(room[row], row))
        for row in range(<int64_t>rows.size()):
            self._emit(rows[row])
        # Empty every bin and the buffer.
        while self._age_head != -1:
            self._unbuffer(self._age_head)
        for b in range(self.num_bins):
            if self._room[b] != self.capacity:
                self._contents[b].clear()
                self._count[b] = 0
                self._move_bin(b, self.capacity)
                self._unlink_open(b)
        self._reset()

    def take_rows(self):
        """(int64[items] ids, int64[rows] items per row) of the rows emitted since the
        last call, in emission order; each row lists its items in placement order."""
        self._enter()
        try:
            result = _to_numpy(self._out_items), _to_numpy(self._out_row_sizes)
            self._out_items.clear()
            self._out_row_sizes.clear()
        finally:
            self._busy = False
        return result

    cdef void _emit(self, vector[i64pair]& items) noexcept nogil:
        cdef int64_t i
        for i in range(<int64_t>items.size()):
            self._out_items.push_back(items[i].first)
        self._out_row_sizes.push_back(items.size())

    # --- the bins' room buckets -------------------------------------------------------

    cdef inline int64_t _bin_with_room(self, int64_t room) noexcept nogil:
        """A bin with exactly ``room`` cells left (a member of _rooms): the lowest empty
        bin, or the last bin that got this room."""
        if room == self.capacity:
            return self._empty_bins.next_at_or_after(0)
        return self._room_head[room]

    cdef inline void _move_bin(self, int64_t b, int64_t room) noexcept nogil:
        """Moves bin ``b`` from its room's bucket to ``room``'s."""
        cdef int64_t old = self._room[b]
        cdef int32_t next_bin, prev_bin
        if old == self.capacity:
            self._empty_bins.discard(b)
            self._num_empty -= 1
            if self._num_empty == 0:
                self._rooms.discard(old)
        else:
            next_bin, prev_bin = self._bin_next[b], self._bin_prev[b]
            if prev_bin >= 0:
                self._bin_next[prev_bin] = next_bin
            else:
                self._room_head[old] = next_bin
                if next_bin < 0:
                    self._rooms.discard(old)
            if next_bin >= 0:
                self._bin_prev[next_bin] = prev_bin
        self._room[b] = room
        self._rooms.add(room)
        if room == self.capacity:
            self._empty_bins.add(b)
            self._num_empty += 1
        else:
            next_bin = self._room_head[room]
            self._bin_next[b] = next_bin
            self._bin_prev[b] = -1
            if next_bin >= 0:
                self._bin_prev[next_bin] = <int32_t>b
            self._room_head[room] = <int32_t>b

    cdef inline void _unlink_open(self, int64_t b) noexcept nogil:
        cdef int32_t next_bin = self._open_next[b], prev_bin = self._open_prev[b]
        if prev_bin >= 0:
            self._open_next[prev_bin] = next_bin
        else:
            self._open_head = next_bin
        if next_bin >= 0:
            self._open_prev[next_bin] = prev_bin
        else:
            self._open_tail = prev_bin
        self._opened[b] = -1

    # --- the buffer ---------------------------------------------------------------------

    cdef inline void _buffer(self, int64_t length, int64_t item) noexcept nogil:
        cdef int32_t node = self._free_node
        if node >= 0:
            self._free_node = self._by_length_next[node]
        else:
            node = <int32_t>self._node_length.size()
            self._node_length.push_back(0)
            self._node_id.push_back(0)
            self._by_length_next.push_back(-1)
            self._by_length_prev.push_back(-1)
            self._age_next.push_back(-1)
            self._age_prev.push_back(-1)
        self._node_length[node] = length
        self._node_id[node] = item
        self._by_length_prev[node] = -1
        self._by_length_next[node] = self._length_head[length]
        if self._length_head[length] >= 0:
            self._by_length_prev[self._length_head[length]] = node
        self._length_head[length] = node
        self._lengths.add(length)
        self._age_next[node] = -1
        self._age_prev[node] = self._age_tail
        if self._age_tail >= 0:
            self._age_next[self._age_tail] = node
        else:
            self._age_head = node
        self._age_tail = node
        self._buffered += 1

    cdef inline void _unbuffer(self, int32_t node) noexcept nogil:
        """Takes ``node`` out of the buffer (back to the free nodes)."""
        cdef int64_t length = self._node_length[node]
        cdef int32_t next_node = self._by_length_next[node], prev_node = self._by_length_prev[node]
        if prev_node >= 0:
            self._by_length_next[prev_node] = next_node
        else:
            self._length_head[length] = next_node
            if next_node < 0:
                self._lengths.discard(length)
        if next_node >= 0:
            self._by_length_prev[next_node] = prev_node
        next_node, prev_node = self._age_next[node], self._age_prev[node]
        if prev_node >= 0:
            self._age_next[prev_node] = next_node
        else:
            self._age_head = next_node
        if next_node >= 0:
            self._age_prev[next_node] = prev_node
        else:
            self._age_tail = prev_node
        self._by_length_next[node] = self._free_node
        self._free_node = node
        self._buffered -= 1

    cdef inline int32_t _largest_buffered(self, int64_t room) noexcept nogil:
        """The newest buffered item of the largest length <= room, or -1."""
        cdef int64_t length = self._lengths.last_at_or_before(room)
        return -1 if length < 0 else self._length_head[length]

    # --- the rule -------------------------------------------------------------------------

    cdef void _push_one(self, int64_t length) noexcept nogil:
        cdef int32_t node
        cdef int64_t opened, i
        self._buffer(length, self.clock)
        self.clock += 1
        # The oldest has waited long enough.
        while self._age_head >= 0 and self.clock - (self._node_id[self._age_head] + 1) >= self.buffer_wait:
            self._take(self._age_head)
        while self._buffered > self.buffer_size:
            # The largest item that fits some bin; if none does, the largest.
            node = self._largest_buffered(self._rooms.last_at_or_before(self.capacity))
            self._take(node if node >= 0 else self._largest_buffered(self.capacity))
        # Close bins open too long: the oldest first, bins opened together by index.
        while self._open_head >= 0 and self.clock - self._opened[self._open_head] >= self.bin_wait:
            opened = self._opened[self._open_head]
            self._expired.clear()
            while self._open_head >= 0 and self._opened[self._open_head] == opened:
                self._expired.push_back(self._open_head)
                self._unlink_open(self._open_head)
            cpp_sort(self._expired.begin(), self._expired.end())
            for i in range(<int64_t>self._expired.size()):
                self._close(self._expired[i])

    cdef void _take(self, int32_t node) noexcept nogil:
        """Moves a buffered item into the best bin: the fullest with room."""
        cdef int64_t length = self._node_length[node], item = self._node_id[node]
        cdef int64_t room, b
        self._unbuffer(node)
        room = self._rooms.next_at_or_after(length)
        if room < 0:  # fits no bin: close the fullest (none is empty: an empty bin fits it)
            self._close(self._bin_with_room(self._rooms.next_at_or_after(0)))
            room = self.capacity
        b = self._bin_with_room(room)
        self._move_bin(b, room - length)
        if self._opened[b] < 0:
            self._opened[b] = self.clock
            self._open_next[b] = -1
            self._open_prev[b] = self._open_tail
            if self._open_tail >= 0:
                self._open_next[self._open_tail] = <int32_t>b
            else:
                self._open_head = <int32_t>b
            self._open_tail = <int32_t>b
        self._contents[b].push_back(i64pair(item, length))
        self._count[b] += 1
        if self._count[b] == self.max_items:  # at the cap: nothing else goes in
            self._close(b)

    cdef void _close(self, int64_t b) noexcept nogil:
        """Tops bin ``b`` up from the buffer (the largest item that fits first, up to the
        cap), emits it and empties it."""
        cdef int64_t room = self._room[b]
        cdef int32_t node
        while room > 0 and (self.max_items == 0 or self._count[b] < self.max_items):
            node = self._largest_buffered(room)
            if node < 0:
                break
            self._contents[b].push_back(i64pair(self._node_id[node], self._node_length[node]))
            self._count[b] += 1
            room -= self._node_length[node]
            self._unbuffer(node)
        self._emit(self._contents[b])
        self._contents[b].clear()
        self._count[b] = 0
        self._move_bin(b, self.capacity)
        if self._opened[b] >= 0:
            self._unlink_open(b)


cdef object _to_numpy(vector[int64_t]& values):
    out = np.empty(values.size(), dtype=np.int64)
    cdef int64_t[::1] view = out
    if values.size():
        memcpy(&view[0], values.data(), values.size() * sizeof(int64_t))
    return out


# --- Concat-then-split: grain's ConcatThenSplitIterDataset's cutting, as a plan ------

cdef struct _CtsRun:
    # What every step of concat_then_split reads: the items and the rules.
    const int64_t* lengths        # [n, F]
    const unsigned char* scalar   # [n, F]
    const int64_t* capacities     # [F]
    const unsigned char* meta     # [F]
    int64_t num_features


cdef inline int64_t _cts_sliced_length(
    const _CtsRun* run, int64_t e, int64_t f, const int64_t* sl
) noexcept nogil:
    """Cells of feature f of item e under slices sl (2 per feature), as grain counts them."""
    cdef int64_t size = run.lengths[e * run.num_features + f], a, b
    if run.scalar[e * run.num_features + f]:
        return 1
    if run.meta[f] or sl[2 * f] == -1:
        return size
    a = sl[2 * f] if sl[2 * f] < size else size
    b = sl[2 * f + 1] if sl[2 * f + 1] < size else size
    return b - a if b > a else 0


cdef int _cts_add(
    const _CtsRun* run,
    int64_t e,
    int64_t* sl,
    int64_t* tokens,
    int64_t* new,
    int64_t* points,
    vector[int64_t]& buffer_items,
    vector[int64_t]& buffer_slices,
) noexcept nogil:
    """grain's _maybe_add_to_buffer. Returns 0 when the item went in whole, else 1 with
    ``sl`` rewritten to the slices left over (unchanged when nothing of it fits)."""
    cdef int64_t f, F = run.num_features, length, available, begin, end
    cdef bint cut = False, any_point = False
    for f in range(F):
        length = _cts_sliced_length(run, e, f, sl)
        available = run.capacities[f] - tokens[f]
        if run.meta[f]:
            if length > available:
                return 1  # a meta feature must fit whole: the item waits
            new[f] = length
        elif length > available:
            cut = True
            points[f] = (0 if sl[2 * f] == -1 else sl[2 * f]) + available
            new[f] = available
        else:
            points[f] = length
            new[f] = length
    for f in range(F):
        tokens[f] += new[f]
    if not cut:
        buffer_items.push_back(e)
        for f in range(2 * F):
            buffer_slices.push_back(sl[f])
        return 0
    for f in range(F):
        if not run.meta[f] and points[f] != 0:
            any_point = True
    if not any_point:
        return 1  # cut at the very start: nothing of it goes into this row
    buffer_items.push_back(e)
    for f in range(F):
        if run.meta[f]:
            buffer_slices.push_back(sl[2 * f])
            buffer_slices.push_back(sl[2 * f + 1])
            continue
        if sl[2 * f] == -1:
            begin = 0
            end = 1 if run.scalar[e * F + f] else run.lengths[e * F + f]
        else:
            begin = sl[2 * f]
            end = sl[2 * f + 1]
        buffer_slices.push_back(begin)
        buffer_slices.push_back(points[f])
        sl[2 * f] = points[f]
        sl[2 * f + 1] = end
    return 1


cdef void _cts_emit(
    const _CtsRun* run,
    int64_t e,
    const int64_t* sl,
    int64_t row,
    vector[int64_t]& items,
    vector[int64_t]& rows_of,
    vector[int64_t]& starts,
    vector[int64_t]& cells,
) noexcept nogil:
    cdef int64_t f, F = run.num_features, size
    items.push_back(e)
    rows_of.push_back(row)
    for f in range(F):
        size = run.lengths[e * F + f]
        if run.scalar[e * F + f] or run.meta[f] or sl[2 * f] == -1:
            starts.push_back(0)
        else:
            starts.push_back(sl[2 * f] if sl[2 * f] < size else size)
        cells.push_back(_cts_sliced_length(run, e, f, sl))


def concat_then_split(
    const int64_t[:, ::1] lengths,
    const unsigned char[:, ::1] scalar,
    const int64_t[::1] capacities,
    const unsigned char[::1] meta,
    int64_t split_full_length,
    const int64_t[:, ::1] carry,
    int64_t final,
    int64_t max_rows,
):
    """Cuts a stream of items into rows exactly as grain's ``ConcatThenSplitIterDataset``;
    see the NumPy twin for the rules, arguments and result."""
    cdef int64_t n = lengths.shape[0], F = lengths.shape[1]
    cdef int64_t f, e, j, k, rows = 0, fresh, consumed = 0, status = 0, remainder_item = -1
    cdef bint stopped, broke, full, longer, carried_whole = True
    cdef _CtsRun run
    cdef vector[int64_t] sl = vector[int64_t](2 * F, -1), step_sl = vector[int64_t](2 * F, -1)
    cdef vector[int64_t] empty = vector[int64_t](2 * F, -1)
    cdef vector[int64_t] tokens = vector[int64_t](F, 0), new = vector[int64_t](F, 0)
    cdef vector[int64_t] points = vector[int64_t](F, 0)
    cdef vector[int64_t] buffer_items, buffer_slices, whole_rows
    cdef vector[int64_t] items, rows_of, starts, cells
    cdef int64_t step_item
    if (
        scalar.shape[0] != n or scalar.shape[1] != F or capacities.shape[0] != F
        or meta.shape[0] != F or carry.shape[0] != F or carry.shape[1] != 2
    ):
        raise ValueError("concat_then_split: expected scalar [n, F], capacities [F], meta [F], carry [F, 2]")
    if n == 0:
        return (
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, F), np.int64),
            np.zeros((0, F), np.int64), 0, 0, np.asarray(carry).copy(), 0,
        )
    run.lengths = &lengths[0, 0]
    run.scalar = &scalar[0, 0]
    run.capacities = &capacities[0] if F else NULL
    run.meta = &meta[0] if F else NULL
    run.num_features = F
    with nogil:
        for f in range(F):
            sl[2 * f] = carry[f, 0]
            sl[2 * f + 1] = carry[f, 1]
            if carry[f, 0] != -1 or carry[f, 1] != -1:
                carried_whole = False
        remainder_item = -1 if carried_whole else 0
        fresh = 0 if carried_whole else 1
        while True:
            if remainder_item >= 0:
                step_item = remainder_item
                step_sl = sl
            else:
                step_item = fresh
                step_sl = empty
            for f in range(F):
                tokens[f] = 0
            buffer_items.clear()
            buffer_slices.clear()
            whole_rows.clear()
            stopped = False
            broke = False
            while True:
                if remainder_item >= 0:
                    if _cts_add(&run, remainder_item, sl.data(), tokens.data(), new.data(),
                                points.data(), buffer_items, buffer_slices):
                        broke = True
                        break
                    remainder_item = -1
                if fresh == n:
                    stopped = True
                    break
                e = fresh
                fresh += 1
                if not split_full_length:
                    full = False
                    longer = False
                    for f in range(F):
                        k = 1 if scalar[e, f] else lengths[e, f]
                        if k > capacities[f]:
                            longer = True
                        elif k == capacities[f]:
                            full = True
                    if full and not longer:
                        whole_rows.push_back(e)
                        continue
                sl = empty
                if _cts_add(&run, e, sl.data(), tokens.data(), new.data(), points.data(),
                            buffer_items, buffer_slices):
                    remainder_item = e
                    broke = True
                    break
            if stopped and not final:
                consumed = step_item
                sl = step_sl
                break
            if buffer_items.size():
                for j in range(<int64_t>buffer_items.size()):
                    _cts_emit(&run, buffer_items[j], buffer_slices.data() + 2 * F * j, rows,
                              items, rows_of, starts, cells)
                rows += 1
            for j in range(<int64_t>whole_rows.size()):
                _cts_emit(&run, whole_rows[j], empty.data(), rows, items, rows_of, starts, cells)
                rows += 1
            if stopped:
                consumed = n
                sl = empty
                break
            if broke and buffer_items.size() == 0 and whole_rows.size() == 0:
                consumed = remainder_item
                status = 1
                break
            if rows >= max_rows:
                if remainder_item >= 0:
                    consumed = remainder_item
                else:
                    consumed = fresh
                    sl = empty
                break
    p = items.size()
    out_items = np.empty(p, np.int64)
    out_rows = np.empty(p, np.int64)
    out_starts = np.empty((p, F), np.int64)
    out_cells = np.empty((p, F), np.int64)
    cdef int64_t[::1] oi = out_items, orow = out_rows
    cdef int64_t[:, ::1] ost = out_starts, oce = out_cells
    for j in range(<int64_t>p):
        oi[j] = items[j]
        orow[j] = rows_of[j]
        for f in range(F):
            ost[j, f] = starts[j * F + f]
            oce[j, f] = cells[j * F + f]
    next_carry = np.empty((F, 2), np.int64)
    cdef int64_t[:, ::1] nc = next_carry
    for f in range(F):
        nc[f, 0] = sl[2 * f]
        nc[f, 1] = sl[2 * f + 1]
    return out_items, out_rows, out_starts, out_cells, rows, consumed, next_carry, status


# Rows on demand: a packing index's rows gathered from the corpus (xbatch.packing.packed_rows)
# ---------------------------------------------------------------------------------------


def gather_packed_rows(
    const corpus_token_t[::1] tokens,
    const int64_t[::1] document_starts,
    const int64_t[::1] document_ends,
    int64_t first_document,
    const int64_t[::1] piece_document,
    const int32_t[::1] piece_start,
    const int32_t[::1] piece_length,
    const int64_t[::1] row_offsets,
    const int64_t[::1] rows,
    int32_t eod_token_id,
    int32_t pad_token_id,
    int shift_targets,
    int32_t[:, ::1] out_inputs,
    int32_t[:, ::1] out_targets,
    int32_t[:, ::1] out_inputs_segmentation,
    int32_t[:, ::1] out_targets_segmentation,
    int32_t[:, ::1] out_inputs_position,
    int32_t[:, ::1] out_targets_position,
):
    """Writes the LLM fields of index rows ``rows`` straight from the corpus, one row at a time.

    Every value read from the index is checked before it is used, so no input reads or
    writes out of bounds. Returns -1; or ``i`` >= 0, the first requested row that is not
    in the index or whose pieces lie outside it, their documents, the corpus or the row;
    or ``-2 - i`` for the first requested row holding a token id outside ``[0, 2**31)``
    (see the NumPy twin for the layout). The outputs are unspecified after a failure.
    """
    cdef Py_ssize_t n = rows.shape[0], seq_len = out_targets.shape[1]
    cdef Py_ssize_t size = tokens.shape[0], num_documents = document_starts.shape[0]
    cdef Py_ssize_t num_pieces = piece_document.shape[0], num_rows = row_offsets.shape[0] - 1
    cdef Py_ssize_t i, j, row, first, last, p, fill, cells, token_cells, failed = -1
    cdef int64_t document, start, length, begin, end
    cdef int32_t segment
    cdef uint64_t seen
    cdef int32_t[:, ::1] packed, segmentation, positions
    if (out_inputs.shape[0] != n or out_inputs.shape[1] != seq_len
            or out_inputs_segmentation.shape[0] != n or out_inputs_segmentation.shape[1] != seq_len
            or out_targets_segmentation.shape[0] != n or out_targets_segmentation.shape[1] != seq_len
            or out_inputs_position.shape[0] != n or out_inputs_position.shape[1] != seq_len
            or out_targets_position.shape[0] != n or out_targets_position.shape[1] != seq_len):
        raise ValueError("out_*: expected six [rows, seq_len] arrays")
    if out_targets.shape[0] != n or seq_len < 1 or seq_len > INT32_MAX:
        raise ValueError("out_targets: expected [rows, seq_len] with 1 <= seq_len < 2**31")
    if document_ends.shape[0] != num_documents or piece_start.shape[0] != num_pieces \
            or piece_length.shape[0] != num_pieces:
        raise ValueError("document_ends, piece_start, piece_length: expected one entry per document / piece")
    # The packed tokens, segment ids and positions go into the fields that hold them
    # unshifted; the other three are copies of them shifted by one cell.
    if shift_targets:
        packed, segmentation, positions = out_inputs, out_inputs_segmentation, out_inputs_position
    else:
        packed, segmentation, positions = out_targets, out_targets_segmentation, out_targets_position
    with nogil:
        for i in range(n):
            row = rows[i]
            if row < 0 or row >= num_rows:
                failed = i
                break
            first = row_offsets[row]
            last = row_offsets[row + 1]
            if first < 0 or last < first or last > num_pieces:
                failed = i
                break
            fill = 0
            segment = 0
            for p in range(first, last):
                document = piece_document[p]
                if document < first_document or document - first_document >= num_documents:
                    failed = i
                    break
                document -= first_document
                begin = document_starts[document]
                end = document_ends[document]
                start = piece_start[p]
                length = piece_length[p]
                # A piece holds cells start .. start + length - 1 of its document's
                # end - begin tokens followed by the EOD, and fits the rest of the row.
                if begin < 0 or end < begin or end > size or start < 0 or length < 1 \
                        or length > seq_len - fill or start + length > end - begin + 1:
                    failed = i
                    break
                token_cells = length if start + length <= end - begin else length - 1
                seen = 0
                for j in range(token_cells):
                    # Negative ids turn into values above 2**63 here, so one test catches both.
                    seen |= <uint64_t>tokens[begin + start + j]
                    packed[i, fill + j] = <int32_t>tokens[begin + start + j]
                if seen > <uint64_t>INT32_MAX:
                    failed = -2 - i
                    break
                if token_cells < length:
                    packed[i, fill + token_cells] = eod_token_id
                segment += 1
                for j in range(length):
                    segmentation[i, fill + j] = segment
                    positions[i, fill + j] = <int32_t>j
                fill += length
            if failed != -1:
                break
            for j in range(fill, seq_len):
                packed[i, j] = pad_token_id
                segmentation[i, j] = 0
                positions[i, j] = 0
            if shift_targets:  # targets: the next cell's token, segment and position
                cells = seq_len - 1
                if cells:
                    memcpy(&out_targets[i, 0], &packed[i, 1], cells * sizeof(int32_t))
                    memcpy(&out_targets_segmentation[i, 0], &segmentation[i, 1], cells * sizeof(int32_t))
                    memcpy(&out_targets_position[i, 0], &positions[i, 1], cells * sizeof(int32_t))
                out_targets[i, cells] = pad_token_id
                out_targets_segmentation[i, cells] = 0
                out_targets_position[i, cells] = 0
            else:  # inputs: the EOD, then the tokens one cell later; the same segments
                out_inputs[i, 0] = eod_token_id
                if seq_len > 1:
                    memcpy(&out_inputs[i, 1], &packed[i, 0], (seq_len - 1) * sizeof(int32_t))
                memcpy(&out_inputs_segmentation[i, 0], &segmentation[i, 0], seq_len * sizeof(int32_t))
                memcpy(&out_inputs_position[i, 0], &positions[i, 0], seq_len * sizeof(int32_t))
    return failed


# --- Concat-then-split: one feature's rows in one pass (values, segment ids, positions) --

from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.string cimport memset


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define xb_prefetch(p) __builtin_prefetch((const void*)(p))
    #else
    #define xb_prefetch(p) ((void)0)
    #endif
    """
    void xb_prefetch(const void* p) noexcept nogil


DEF PREFETCH_BYTES = 1024  # of each piece's start; the hardware prefetcher follows long ones


cdef void _cts_prefetch(
    list elements, object key, const int64_t[::1] items, const int64_t[::1] starts,
    const int64_t[::1] cells, int64_t cell_bytes,
):
    """Asks the CPU to fetch the first bytes of every piece before they are copied: the
    pieces lie all over memory, and fetching them one by one waits on each miss."""
    cdef int64_t p, e, s, c, k, size
    cdef PyObject* element
    cdef PyObject* value
    cdef char* data
    for p in range(items.shape[0]):
        e = items[p]
        if e < 0 or e >= PyList_GET_SIZE(elements):
            return
        element = PyList_GET_ITEM(elements, e)
        if type(<object>element) is not dict:
            return
        value = PyDict_GetItem(<object>element, key)
        if value == NULL or not cnp.PyArray_CheckExact(<object>value):
            return
        s = starts[p]
        c = cells[p]
        size = cnp.PyArray_DIM(<cnp.ndarray>value, 0) if cnp.PyArray_NDIM(<cnp.ndarray>value) else 0
        if s < 0 or c <= 0 or s > size or c > size - s:
            continue
        data = <char*>cnp.PyArray_DATA(<cnp.ndarray>value) + s * cell_bytes
        size = c * cell_bytes if c * cell_bytes < PREFETCH_BYTES else PREFETCH_BYTES
        for k in range(0, size, 64):
            xb_prefetch(data + k)


cdef inline void _cts_close_row(
    char* values, int64_t cursor, int64_t capacity, int64_t cell_bytes, int32_t* ids
) noexcept nogil:
    """Zeroes a row's cells from ``cursor`` on (values and, unless NULL, both id rows)."""
    if cursor < capacity:
        memset(values + cursor * cell_bytes, 0, (capacity - cursor) * cell_bytes)
        if ids != NULL:
            memset(ids + cursor, 0, (capacity - cursor) * sizeof(int32_t))
            memset(ids + capacity + cursor, 0, (capacity - cursor) * sizeof(int32_t))


def write_split_rows(
    list elements,
    object key,
    const int64_t[::1] items,
    const int64_t[::1] rows_of,
    const int64_t[::1] starts,
    const int64_t[::1] cells,
    int64_t first_row,
    cnp.ndarray out_values,
    int32_t[:, :, ::1] out_ids,
):
    """Writes every cell of one feature's rows from a concat-then-split plan in one pass;
    see the NumPy twin. Returns -1, or the first piece whose value is not a plain array
    of ``out_values``' dtype and cell shape holding its cells (rows partly written then)."""
    cdef int64_t n = items.shape[0], p, e, r, s, c, k, row = 0, cursor = 0
    cdef int64_t rows, capacity, cell_bytes, row_bytes, ndim = out_values.ndim
    cdef int32_t segment = 0
    cdef char* base
    cdef char* data
    cdef char* out_end
    cdef int32_t* ids = NULL
    cdef int32_t* id_row = NULL
    cdef PyObject* element
    cdef PyObject* value
    cdef cnp.ndarray array
    cdef vector[int32_t] iota
    if ndim < 2 or not cnp.PyArray_IS_C_CONTIGUOUS(out_values) or out_values.dtype.hasobject:
        raise ValueError("write_split_rows: out_values must be a C-contiguous [rows, cells, ...] array without objects")
    if rows_of.shape[0] != n or starts.shape[0] != n or cells.shape[0] != n:
        raise ValueError("write_split_rows: items, rows_of, starts and cells must have one entry per piece")
    rows = out_values.shape[0]
    capacity = out_values.shape[1]
    cell_bytes = out_values.itemsize
    for k in range(2, ndim):
        cell_bytes *= out_values.shape[k]
    row_bytes = capacity * cell_bytes
    base = <char*>cnp.PyArray_DATA(out_values)
    out_end = base + rows * row_bytes
    if out_ids is not None:
        if out_ids.shape[0] != rows or out_ids.shape[1] != 2 or out_ids.shape[2] != capacity:
            raise ValueError("write_split_rows: out_ids must be int32[rows, 2, cells]")
        if capacity > INT32_MAX or n > INT32_MAX:
            raise ValueError("write_split_rows: positions and segment ids must fit int32")
        if rows and capacity:
            ids = &out_ids[0, 0, 0]
        iota.resize(capacity)
        for k in range(capacity):
            iota[k] = <int32_t>k
    if cell_bytes <= PREFETCH_BYTES:
        _cts_prefetch(elements, key, items, starts, cells, cell_bytes)
    for p in range(n):
        e = items[p]
        if e < 0 or e >= PyList_GET_SIZE(elements):
            raise ValueError(f"items: piece {p} names element {e}, expected [0, {PyList_GET_SIZE(elements)})")
        # Overflow-free: first_row is checked against rows_of[p] before subtracting.
        r = rows_of[p] - first_row if rows_of[p] >= first_row else -1
        if r < row or r >= rows:
            raise ValueError(
                f"rows: piece {p} has row {rows_of[p]}, expected non-decreasing rows in"
                f" [{first_row + row}, {first_row} + {rows})"
            )
        if starts[p] < 0 or cells[p] < 0:
            raise ValueError(f"starts, cells: piece {p} has start {starts[p]} and {cells[p]} cells, expected >= 0")
        while row < r:  # rows are written in order: close the ones before this piece
            _cts_close_row(base + row * row_bytes, cursor, capacity, cell_bytes,
                           ids + row * 2 * capacity if ids != NULL else NULL)
            row += 1
            cursor = 0
            segment = 0
        element = PyList_GET_ITEM(elements, e)
        if type(<object>element) is not dict:
            return p
        value = PyDict_GetItem(<object>element, key)
        if value == NULL or not cnp.PyArray_CheckExact(<object>value):
            return p
        array = <cnp.ndarray>value
        if (
            array.ndim != ndim - 1
            or not cnp.PyArray_IS_C_CONTIGUOUS(array)
            or not cnp.PyArray_EquivTypes(array.descr, out_values.descr)
        ):
            return p
        for k in range(1, ndim - 1):
            if array.shape[k] != out_values.shape[k + 1]:
                return p
        s = starts[p]
        c = cells[p]
        if s < 0 or c < 0 or s > array.shape[0] or c > array.shape[0] - s or c > capacity - cursor:
            return p
        data = <char*>cnp.PyArray_DATA(array) + s * cell_bytes
        if c > 0 and data < out_end and base < data + c * cell_bytes:
            return p  # shares memory with the rows: the caller's general path refuses it
        memcpy(base + row * row_bytes + cursor * cell_bytes, data, c * cell_bytes)
        if ids != NULL:
            segment += 1
            id_row = ids + row * 2 * capacity
            for k in range(cursor, cursor + c):
                id_row[k] = segment
            if c > 0:
                memcpy(id_row + capacity + cursor, iota.data(), c * sizeof(int32_t))
        cursor += c
    while row < rows:
        _cts_close_row(base + row * row_bytes, cursor, capacity, cell_bytes,
                       ids + row * 2 * capacity if ids != NULL else NULL)
        row += 1
        cursor = 0
    return -1


def element_lengths(list elements, list keys, int64_t start):
    """The lengths (dim 0 of each key's array, key by key) of ``elements[start:]`` up to
    the first that is not a ``dict`` of exactly ``len(keys)`` entries holding, under every
    key, an ``np.ndarray`` of >= 1 dims; a flat list of ints. See the NumPy twin."""
    cdef Py_ssize_t e, f, num_keys = len(keys)
    cdef PyObject* element
    cdef PyObject* value
    cdef list out = []
    if start < 0:
        raise ValueError(f"start: expected >= 0, got {start}")
    e = start
    while e < PyList_GET_SIZE(elements):
        element = PyList_GET_ITEM(elements, e)
        if type(<object>element) is not dict or len(<dict>element) != num_keys:
            break
        for f in range(num_keys):
            value = PyDict_GetItem(<object>element, <object>PyList_GET_ITEM(keys, f)) if f < PyList_GET_SIZE(keys) else NULL
            if value == NULL or not cnp.PyArray_CheckExact(<object>value) or cnp.PyArray_NDIM(<cnp.ndarray>value) < 1:
                del out[len(out) - f :]
                return out
            out.append(cnp.PyArray_DIM(<cnp.ndarray>value, 0))
        e += 1
    return out


# ---------------------------------------------------------------------------------------
# Loss masks (issue 13): a document mask with its EOD cells, and the targets
# segmentation of the targets trained on with the loss tokens per row, one pass each.


def eod_cell_mask(const int32_t[::1] mask, const int64_t[::1] lengths, int32_t eod_loss, int32_t[::1] out):
    """Writes each document's mask followed by one ``eod_loss`` cell, document after
    document, checking that every mask value is 0 or 1 in the same pass.

    Returns -1 on success, else the index in ``mask`` of the first value that is not 0
    or 1 (``out`` is then partly written).
    """
    cdef int64_t n = mask.shape[0], documents = lengths.shape[0], cells = out.shape[0]
    cdef int64_t i, j, length, source = 0, target = 0, bad = -1, broken = 0
    cdef uint32_t seen
    with nogil:
        for i in range(documents):
            length = lengths[i]
            # Bounds asserted per document (kept in the optimized build).
            if length < 0 or length > n - source or length >= cells - target:
                broken = 1
                break
            seen = 0
            for j in range(length):
                out[target + j] = mask[source + j]
                seen |= <uint32_t>mask[source + j]  # a negative value is huge as uint32
            out[target + length] = eod_loss
            if seen > 1:
                for j in range(length):
                    if <uint32_t>mask[source + j] > 1:
                        bad = source + j
                        break
                break
            source += length
            target += length + 1
    if broken or (bad < 0 and (source != n or target != cells)):
        _checks.raise_internal("eod_cell_mask")
    return bad


def trained_segmentation(
    const int32_t[::1] loss_mask,
    const int64_t[::1] lengths,
    const int64_t[::1] bins,
    int64_t shift,
    int32_t[:, ::1] out,
    int64_t[::1] out_counts,
):
    """Writes every cell of ``out``: a placed cell's 1-based segment id in its row where
    its mask is non-zero, 0 where it is zero and where no item lies; with ``shift`` 1
    everything moves one cell left (a row's first cell drops out, its last column is 0).
    ``out_counts[b]`` gets the non-zero cells of row ``b``.

    Items go in order to their row's next free cell, as for :func:`pack_rows` with
    alignment 1. Returns -1 on success, else the index of the first item that does not
    fit its row (nothing is written then).
    """
    cdef int64_t rows = out.shape[0], row_length = out.shape[1], num_values = loss_mask.shape[0]
    cdef vector[int64_t] cursor = vector[int64_t](rows, 0)
    cdef vector[int32_t] items_in_row = vector[int32_t](rows, 0)
    cdef int64_t i, j, b, n, start, first, column, source = 0, failed, bad = -1, count
    cdef int32_t segment, trained
    if shift != 0 and shift != 1:
        raise ValueError(f"shift: expected 0 or 1, got {shift}")
    if out_counts.shape[0] != rows:
        raise ValueError("out_counts: expected one count per row of out")
    if row_length > INT32_MAX or lengths.shape[0] > INT32_MAX:
        raise ValueError("trained_segmentation: segment ids must fit int32")
    with nogil:
        failed = _first_overflow(lengths, bins, 1, rows, row_length, num_values, cursor)
        if failed < 0:
            for b in range(rows):
                cursor[b] = 0
                out_counts[b] = 0
            for i in range(lengths.shape[0]):
                b = bins[i]
                n = lengths[i]
                start = cursor[b] if 0 <= b < rows else -1
                if _outside(b, start, n, rows, row_length) or n > num_values - source:
                    bad = i
                    break
                items_in_row[b] += 1
                segment = items_in_row[b]
                # With the shift, cell c lands in column c - 1: a row's first cell has none.
                first = 1 if shift and start == 0 else 0
                column = start - shift
                count = 0
                for j in range(first, n):
                    trained = loss_mask[source + j] != 0
                    out[b, column + j] = trained * segment
                    count += trained
                out_counts[b] += count
                source += n
                cursor[b] = start + n
            if bad < 0:
                for b in range(rows):
                    # Columns from cursor - shift on hold no target trained on (with the
                    # shift the last column always lies there).
                    start = cursor[b] - shift if cursor[b] > 0 else 0
                    _fill(&out[b, 0] + start, row_length - start, <int32_t>0)
    if bad >= 0:
        _checks.raise_internal("trained_segmentation")
    return failed
