/*
 * io_pickle.c — a restricted pickle machine: the data opcodes of pickle protocols 2 to 5 (plus the
 * binary opcodes of protocol 1), with every name lookup and call delegated to the caller's hooks.
 *
 * Nothing here can reach arbitrary code: GLOBAL / STACK_GLOBAL only ever produce what find_global
 * returns (the caller's allow-list), REDUCE only passes its operands to the caller's reduce hook,
 * and the object-building opcodes that would instantiate classes (INST, OBJ, NEWOBJ, NEWOBJ_EX,
 * EXT*) are refused. Every read is checked against the bytes left, every memo index against the
 * memo, every pop against the current mark, so a truncated or corrupt pickle stops with an error
 * naming the byte offset and opcode.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_torch_io.h"

struct hr_pickle {
    char what[384];
    hr_pickle_hooks hooks;
    /* Arena: every value ever created, freed together. */
    hr_pk_value **arena;
    size_t narena, arena_cap;
    /* Shared immutable singletons. */
    hr_pk_value *none, *yes, *no;
    /* State of the pickle being run. */
    hr_pk_value **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t nmarks, marks_cap;
    hr_pk_value **memo;
    size_t memo_cap, memo_count;
    const unsigned char *buf;
    size_t len, pos;
};

/* ------------------------------------------------------------------ values */

static int grow(void **arr, size_t *cap, size_t need, size_t elsize)
{
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elsize) return hr_fail(HR_ENOMEM, "out of memory unpickling");
        nc *= 2;
    }
    void *p = realloc(*arr, nc * elsize);
    if (!p) return hr_fail(HR_ENOMEM, "out of memory unpickling");
    *arr = p;
    *cap = nc;
    return 0;
}

hr_pk_value *hr_pickle_value(hr_pickle *p, hr_pk_type type)
{
    if (grow((void **)&p->arena, &p->arena_cap, p->narena + 1, sizeof *p->arena)) return NULL;
    hr_pk_value *v = calloc(1, sizeof *v);
    if (!v) return hr_fail_null(HR_ENOMEM, "out of memory unpickling");
    v->type = type;
    p->arena[p->narena++] = v;
    return v;
}

hr_pk_value *hr_pickle_str(hr_pickle *p, hr_pk_type type, const char *s, size_t len)
{
    if (len == SIZE_MAX) return hr_fail_null(HR_ENOMEM, "out of memory unpickling");
    char *copy = malloc(len + 1);
    if (!copy) return hr_fail_null(HR_ENOMEM, "out of memory unpickling a string of %zu bytes", len);
    if (len) memcpy(copy, s, len);
    copy[len] = '\0';
    hr_pk_value *v = hr_pickle_value(p, type);
    if (!v) {
        free(copy);
        return NULL;
    }
    v->s = copy;
    v->len = len;
    return v;
}

static int seq_push(hr_pk_value *seq, hr_pk_value *item)
{
    if (grow((void **)&seq->items, &seq->cap, seq->n + 1, sizeof *seq->items)) return -1;
    seq->items[seq->n++] = item;
    return 0;
}

const char *hr_pk_type_name(const hr_pk_value *v)
{
    switch (v->type) {
    case HR_PK_NONE: return "None";
    case HR_PK_BOOL: return "bool";
    case HR_PK_INT: return "int";
    case HR_PK_FLOAT: return "float";
    case HR_PK_STR: return "str";
    case HR_PK_BYTES: return "bytes";
    case HR_PK_TUPLE: return "tuple";
    case HR_PK_LIST: return "list";
    case HR_PK_DICT: return "dict";
    case HR_PK_GLOBAL: return v->s;
    case HR_PK_OBJECT: return "object";
    }
    return "?";
}

hr_pk_value *hr_pk_dict_get(const hr_pk_value *dict, const char *key)
{
    if (!dict || dict->type != HR_PK_DICT) return NULL;
    size_t kl = strlen(key);
    /* From the end: a repeated key's last value wins, as in Python. */
    for (size_t i = dict->n; i >= 2; i -= 2) {
        const hr_pk_value *k = dict->items[i - 2];
        if (k->type == HR_PK_STR && k->len == kl && memcmp(k->s, key, kl) == 0) return dict->items[i - 1];
    }
    return NULL;
}

hr_pickle *hr_pickle_new(const char *what, const hr_pickle_hooks *hooks)
{
    hr_pickle *p = calloc(1, sizeof *p);
    if (!p) return hr_fail_null(HR_ENOMEM, "out of memory unpickling");
    snprintf(p->what, sizeof p->what, "%s", what);
    if (hooks) p->hooks = *hooks;
    p->none = hr_pickle_value(p, HR_PK_NONE);
    p->yes = hr_pickle_value(p, HR_PK_BOOL);
    p->no = hr_pickle_value(p, HR_PK_BOOL);
    if (!p->none || !p->yes || !p->no) {
        hr_pickle_free(p);
        return NULL;
    }
    p->yes->b = true;
    return p;
}

void hr_pickle_free(hr_pickle *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->narena; i++) {
        free(p->arena[i]->s);
        free(p->arena[i]->items);
        free(p->arena[i]);
    }
    free(p->arena);
    free(p->stack);
    free(p->marks);
    free(p->memo);
    free(p);
}

/* ------------------------------------------------------------------ the machine */

/* Names of the opcodes, for messages (including the ones refused). */
static const char *op_name(unsigned char op)
{
    switch (op) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    }
    return NULL;
}

/* Reads n bytes at the cursor (NULL with an error when fewer are left). */
static const unsigned char *take(hr_pickle *p, size_t n, const char *what)
{
    if (p->len - p->pos < n)
        return hr_fail_null(HR_EFORMAT, "truncated: %s needs %zu bytes, %zu left", what, n, p->len - p->pos);
    const unsigned char *r = p->buf + p->pos;
    p->pos += n;
    return r;
}

static uint64_t le(const unsigned char *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

static int push(hr_pickle *p, hr_pk_value *v)
{
    if (!v) return -1;
    if (grow((void **)&p->stack, &p->stack_cap, p->sp + 1, sizeof *p->stack)) return -1;
    p->stack[p->sp++] = v;
    return 0;
}

/* The first stack slot the current mark frame owns. */
static size_t frame_base(const hr_pickle *p) { return p->nmarks ? p->marks[p->nmarks - 1] : 0; }

static hr_pk_value *pop(hr_pickle *p)
{
    if (p->sp <= frame_base(p)) return hr_fail_null(HR_EFORMAT, "stack underflow");
    return p->stack[--p->sp];
}

/* The stack slots from i on (an empty run before anything was ever pushed: the stack is still
 * NULL, and NULL + 0 is undefined behaviour in C). */
static hr_pk_value **stack_from(hr_pickle *p, size_t i) { return p->stack ? p->stack + i : NULL; }

static hr_pk_value *top(hr_pickle *p)
{
    if (p->sp <= frame_base(p)) return hr_fail_null(HR_EFORMAT, "stack underflow");
    return p->stack[p->sp - 1];
}

/* Pops the current mark; *start is the first stack slot above it. */
static int pop_mark(hr_pickle *p, size_t *start)
{
    if (!p->nmarks) return hr_fail(HR_EFORMAT, "no MARK on the stack");
    *start = p->marks[--p->nmarks];
    return 0;
}

/* The object just below a popped mark (the target of APPENDS / SETITEMS). */
static hr_pk_value *below_mark(hr_pickle *p, size_t start)
{
    if (start <= frame_base(p)) return hr_fail_null(HR_EFORMAT, "stack underflow");
    return p->stack[start - 1];
}

static hr_pk_value *make_seq(hr_pickle *p, hr_pk_type type, hr_pk_value *const *items, size_t n)
{
    hr_pk_value *v = hr_pickle_value(p, type);
    if (!v) return NULL;
    if (n) {
        if (grow((void **)&v->items, &v->cap, n, sizeof *v->items)) return NULL;
        memcpy(v->items, items, n * sizeof *items);
        v->n = n;
    }
    return v;
}

static int memo_put(hr_pickle *p, uint64_t idx)
{
    hr_pk_value *v = top(p);
    if (!v) return -1;
    /* A pickler numbers its memo entries 0, 1, 2...; each PUT takes at least two bytes, so no real
     * pickle has an index beyond its length. This bounds the memo array a hostile index could force. */
    if (idx >= p->len)
        return hr_fail(HR_EFORMAT, "memo index %" PRIu64 " out of range (the pickle is %zu bytes)", idx, p->len);
    if (grow((void **)&p->memo, &p->memo_cap, (size_t)idx + 1, sizeof *p->memo)) return -1;
    if (idx >= p->memo_count) {
        /* Slots skipped over by a sparse index stay empty. */
        for (size_t i = p->memo_count; i <= idx; i++) p->memo[i] = NULL;
        p->memo_count = (size_t)idx + 1;
    }
    p->memo[idx] = v;
    return 0;
}

static int memo_get(hr_pickle *p, uint64_t idx)
{
    if (idx >= p->memo_count || !p->memo[idx])
        return hr_fail(HR_EFORMAT, "memo index %" PRIu64 " is not set (%zu memo entries)", idx, p->memo_count);
    return push(p, p->memo[idx]);
}

/* The text line of GLOBAL / PERSID (without its newline). */
static const char *read_line(hr_pickle *p, size_t *n)
{
    const unsigned char *s = p->buf + p->pos;
    const unsigned char *nl = memchr(s, '\n', p->len - p->pos);
    if (!nl) return hr_fail_null(HR_EFORMAT, "truncated: unterminated text line");
    *n = (size_t)(nl - s);
    p->pos += *n + 1;
    return (const char *)s;
}

static int push_bytes(hr_pickle *p, hr_pk_type type, uint64_t n, const char *what)
{
    if (n > p->len - p->pos)
        return hr_fail(HR_EFORMAT, "truncated: %s of %" PRIu64 " bytes but only %zu left", what, n, p->len - p->pos);
    const unsigned char *s = take(p, (size_t)n, what);
    return push(p, hr_pickle_str(p, type, (const char *)s, (size_t)n));
}

/* Little-endian two's complement integer of n bytes (LONG1 / LONG4). Values beyond int64 keep their
 * raw bytes in s/len (only the legacy torch magic number needs one). */
static int push_long(hr_pickle *p, uint64_t n)
{
    if (n > p->len - p->pos)
        return hr_fail(HR_EFORMAT, "truncated: integer of %" PRIu64 " bytes but only %zu left", n, p->len - p->pos);
    const unsigned char *b = take(p, (size_t)n, "integer");
    hr_pk_value *v;
    if (n <= 8) {
        v = hr_pickle_value(p, HR_PK_INT);
        if (!v) return -1;
        uint64_t u = n ? le(b, (int)n) : 0;
        if (n && n < 8 && (b[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        v->i = (int64_t)u;
    } else {
        v = hr_pickle_str(p, HR_PK_INT, (const char *)b, (size_t)n);
        if (!v) return -1;
        /* Still an int64 when the extra high bytes are only sign extension. */
        bool neg = b[7] & 0x80, fits = true;
        for (uint64_t k = 8; k < n; k++)
            if (b[k] != (neg ? 0xff : 0x00)) fits = false;
        if (fits) {
            v->i = (int64_t)le(b, 8);
            free(v->s);
            v->s = NULL;
            v->len = 0;
        }
    }
    return push(p, v);
}

static bool hashable(const hr_pk_value *k)
{
    if (k->type == HR_PK_LIST || k->type == HR_PK_DICT) return false;
    if (k->type == HR_PK_TUPLE)
        for (size_t i = 0; i < k->n; i++)
            if (k->items[i]->type == HR_PK_LIST || k->items[i]->type == HR_PK_DICT) return false;
    return true;
}

static int set_items(hr_pk_value *dict, hr_pk_value *const *kv, size_t n)
{
    if (dict->type != HR_PK_DICT) return hr_fail(HR_EFORMAT, "setting items on a %s, not a dict", hr_pk_type_name(dict));
    if (n % 2) return hr_fail(HR_EFORMAT, "odd number of stack items (%zu) for key/value pairs", n);
    for (size_t i = 0; i < n; i += 2) {
        if (!hashable(kv[i])) return hr_fail(HR_EFORMAT, "unhashable dict key of type %s", hr_pk_type_name(kv[i]));
        if (seq_push(dict, kv[i]) || seq_push(dict, kv[i + 1])) return -1;
    }
    return 0;
}

static int append_items(hr_pk_value *list, hr_pk_value *const *items, size_t n)
{
    if (list->type != HR_PK_LIST) return hr_fail(HR_EFORMAT, "appending to a %s, not a list", hr_pk_type_name(list));
    for (size_t i = 0; i < n; i++)
        if (seq_push(list, items[i])) return -1;
    return 0;
}

static int refuse(const char *op, const char *why) { return hr_fail(HR_EFORMAT, "opcode %s is not accepted (%s)", op, why); }

/* One opcode at p->pos. Returns 1 at STOP, 0 to continue, -1 on error. */
static int step(hr_pickle *p, hr_pk_value **result)
{
    const unsigned char *b = take(p, 1, "an opcode");
    if (!b) return hr_fail(HR_EFORMAT, "truncated: the pickle ends without STOP");
    unsigned char op = *b;
    size_t start = 0;
    hr_pk_value *v, *w;
    switch (op) {
    case 0x80: { /* PROTO */
        if (!(b = take(p, 1, "PROTO"))) return -1;
        if (*b > 5) return hr_fail(HR_EFORMAT, "unsupported pickle protocol %u", *b);
        return 0;
    }
    case 0x95: { /* FRAME: a length hint; the data simply follows */
        if (!(b = take(p, 8, "FRAME"))) return -1;
        uint64_t n = le(b, 8);
        if (n > p->len - p->pos)
            return hr_fail(HR_EFORMAT, "truncated: frame of %" PRIu64 " bytes but only %zu left", n, p->len - p->pos);
        return 0;
    }
    case '.': /* STOP */
        if (!(v = pop(p))) return -1;
        if (p->sp || p->nmarks)
            return hr_fail(HR_EFORMAT, "STOP leaves %zu values and %zu marks on the stack", p->sp, p->nmarks);
        *result = v;
        return 1;
    case '(': /* MARK */
        if (grow((void **)&p->marks, &p->marks_cap, p->nmarks + 1, sizeof *p->marks)) return -1;
        p->marks[p->nmarks++] = p->sp;
        return 0;
    case '0': /* POP */
        return pop(p) ? 0 : -1;
    case '1': /* POP_MARK */
        if (pop_mark(p, &start)) return -1;
        p->sp = start;
        return 0;
    case '2': /* DUP */
        if (!(v = top(p))) return -1;
        return push(p, v);
    case 'N': return push(p, p->none);
    case 0x88: return push(p, p->yes);
    case 0x89: return push(p, p->no);
    case 'J': /* BININT: signed 32-bit */
        if (!(b = take(p, 4, "BININT"))) return -1;
        if (!(v = hr_pickle_value(p, HR_PK_INT))) return -1;
        v->i = (int32_t)(uint32_t)le(b, 4);
        return push(p, v);
    case 'K': /* BININT1 */
    case 'M': /* BININT2 */
        if (!(b = take(p, op == 'K' ? 1 : 2, op_name(op)))) return -1;
        if (!(v = hr_pickle_value(p, HR_PK_INT))) return -1;
        v->i = (int64_t)le(b, op == 'K' ? 1 : 2);
        return push(p, v);
    case 0x8a: /* LONG1 */
        if (!(b = take(p, 1, "LONG1"))) return -1;
        return push_long(p, *b);
    case 0x8b: { /* LONG4 */
        if (!(b = take(p, 4, "LONG4"))) return -1;
        int32_t n = (int32_t)(uint32_t)le(b, 4);
        if (n < 0) return hr_fail(HR_EFORMAT, "negative LONG4 length %" PRId32, n);
        return push_long(p, (uint64_t)n);
    }
    case 'G': { /* BINFLOAT: big-endian IEEE double */
        if (!(b = take(p, 8, "BINFLOAT"))) return -1;
        uint64_t u = 0;
        for (int i = 0; i < 8; i++) u = u << 8 | b[i];
        if (!(v = hr_pickle_value(p, HR_PK_FLOAT))) return -1;
        memcpy(&v->f, &u, sizeof v->f);
        return push(p, v);
    }
    case 'X': /* BINUNICODE */
        if (!(b = take(p, 4, "BINUNICODE"))) return -1;
        return push_bytes(p, HR_PK_STR, le(b, 4), "string");
    case 0x8c: /* SHORT_BINUNICODE */
        if (!(b = take(p, 1, "SHORT_BINUNICODE"))) return -1;
        return push_bytes(p, HR_PK_STR, *b, "string");
    case 0x8d: /* BINUNICODE8 */
        if (!(b = take(p, 8, "BINUNICODE8"))) return -1;
        return push_bytes(p, HR_PK_STR, le(b, 8), "string");
    case 'T': { /* BINSTRING (Python 2 str): signed length */
        if (!(b = take(p, 4, "BINSTRING"))) return -1;
        int32_t n = (int32_t)(uint32_t)le(b, 4);
        if (n < 0) return hr_fail(HR_EFORMAT, "negative BINSTRING length %" PRId32, n);
        return push_bytes(p, HR_PK_BYTES, (uint64_t)n, "string");
    }
    case 'U': /* SHORT_BINSTRING */
        if (!(b = take(p, 1, "SHORT_BINSTRING"))) return -1;
        return push_bytes(p, HR_PK_BYTES, *b, "string");
    case 'B': /* BINBYTES */
        if (!(b = take(p, 4, "BINBYTES"))) return -1;
        return push_bytes(p, HR_PK_BYTES, le(b, 4), "bytes");
    case 'C': /* SHORT_BINBYTES */
        if (!(b = take(p, 1, "SHORT_BINBYTES"))) return -1;
        return push_bytes(p, HR_PK_BYTES, *b, "bytes");
    case 0x8e: /* BINBYTES8 */
        if (!(b = take(p, 8, "BINBYTES8"))) return -1;
        return push_bytes(p, HR_PK_BYTES, le(b, 8), "bytes");
    case ')': /* EMPTY_TUPLE */
        return push(p, make_seq(p, HR_PK_TUPLE, NULL, 0));
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: { /* TUPLE3 */
        size_t n = (size_t)(op - 0x84);
        if (p->sp - frame_base(p) < n) return hr_fail(HR_EFORMAT, "stack underflow");
        p->sp -= n;
        return push(p, make_seq(p, HR_PK_TUPLE, stack_from(p, p->sp), n));
    }
    case 't': /* TUPLE */
    case 'l': /* LIST */
        if (pop_mark(p, &start)) return -1;
        v = make_seq(p, op == 't' ? HR_PK_TUPLE : HR_PK_LIST, stack_from(p, start), p->sp - start);
        p->sp = start;
        return push(p, v);
    case ']': /* EMPTY_LIST */
        return push(p, hr_pickle_value(p, HR_PK_LIST));
    case '}': /* EMPTY_DICT */
        return push(p, hr_pickle_value(p, HR_PK_DICT));
    case 'd': /* DICT */
        if (pop_mark(p, &start)) return -1;
        if (!(v = hr_pickle_value(p, HR_PK_DICT))) return -1;
        if (set_items(v, stack_from(p, start), p->sp - start)) return -1;
        p->sp = start;
        return push(p, v);
    case 'a': /* APPEND */
        if (!(w = pop(p)) || !(v = top(p))) return -1;
        return append_items(v, &w, 1);
    case 'e': /* APPENDS */
        if (pop_mark(p, &start)) return -1;
        if (!(v = below_mark(p, start))) return -1;
        if (append_items(v, stack_from(p, start), p->sp - start)) return -1;
        p->sp = start;
        return 0;
    case 's': { /* SETITEM */
        hr_pk_value *kv[2];
        if (!(kv[1] = pop(p)) || !(kv[0] = pop(p)) || !(v = top(p))) return -1;
        return set_items(v, kv, 2);
    }
    case 'u': /* SETITEMS */
        if (pop_mark(p, &start)) return -1;
        if (!(v = below_mark(p, start))) return -1;
        if (set_items(v, stack_from(p, start), p->sp - start)) return -1;
        p->sp = start;
        return 0;
    case 'q': /* BINPUT */
        if (!(b = take(p, 1, "BINPUT"))) return -1;
        return memo_put(p, *b);
    case 'r': /* LONG_BINPUT */
        if (!(b = take(p, 4, "LONG_BINPUT"))) return -1;
        return memo_put(p, le(b, 4));
    case 0x94: /* MEMOIZE */
        return memo_put(p, p->memo_count);
    case 'h': /* BINGET */
        if (!(b = take(p, 1, "BINGET"))) return -1;
        return memo_get(p, *b);
    case 'j': /* LONG_BINGET */
        if (!(b = take(p, 4, "LONG_BINGET"))) return -1;
        return memo_get(p, le(b, 4));
    case 'c': { /* GLOBAL: "module\nname\n" */
        size_t ml = 0, nl = 0;
        const char *m = read_line(p, &ml);
        if (!m) return -1;
        const char *nm = read_line(p, &nl);
        if (!nm) return -1;
        char mod[256], name[256];
        if (ml >= sizeof mod || nl >= sizeof name || memchr(m, 0, ml) || memchr(nm, 0, nl))
            return hr_fail(HR_EFORMAT, "refusing to unpickle a global with an overlong or binary name");
        memcpy(mod, m, ml);
        mod[ml] = '\0';
        memcpy(name, nm, nl);
        name[nl] = '\0';
        if (!p->hooks.find_global) return hr_fail(HR_EFORMAT, "refusing to unpickle global '%s.%s'", mod, name);
        return push(p, p->hooks.find_global(p, p->hooks.ctx, mod, name));
    }
    case 0x93: { /* STACK_GLOBAL */
        hr_pk_value *nm, *m;
        if (!(nm = pop(p)) || !(m = pop(p))) return -1;
        if (m->type != HR_PK_STR || nm->type != HR_PK_STR)
            return hr_fail(HR_EFORMAT, "STACK_GLOBAL needs two strings, got %s and %s", hr_pk_type_name(m),
                           hr_pk_type_name(nm));
        if (m->len >= 256 || nm->len >= 256 || strlen(m->s) != m->len || strlen(nm->s) != nm->len)
            return hr_fail(HR_EFORMAT, "refusing to unpickle a global with an overlong or binary name");
        if (!p->hooks.find_global) return hr_fail(HR_EFORMAT, "refusing to unpickle global '%s.%s'", m->s, nm->s);
        return push(p, p->hooks.find_global(p, p->hooks.ctx, m->s, nm->s));
    }
    case 'R': { /* REDUCE */
        hr_pk_value *args, *fn;
        if (!(args = pop(p)) || !(fn = pop(p))) return -1;
        if (fn->type != HR_PK_GLOBAL) return hr_fail(HR_EFORMAT, "REDUCE on a %s, which is not callable", hr_pk_type_name(fn));
        if (args->type != HR_PK_TUPLE)
            return hr_fail(HR_EFORMAT, "REDUCE of %s with a %s of arguments (needs a tuple)", fn->s, hr_pk_type_name(args));
        if (!p->hooks.reduce) return hr_fail(HR_EFORMAT, "refusing to call '%s'", fn->s);
        return push(p, p->hooks.reduce(p, p->hooks.ctx, fn, args));
    }
    case 'b': { /* BUILD */
        hr_pk_value *state;
        if (!(state = pop(p)) || !(v = top(p))) return -1;
        if (!p->hooks.build) return hr_fail(HR_EFORMAT, "refusing to set the state of a %s", hr_pk_type_name(v));
        return p->hooks.build(p, p->hooks.ctx, v, state);
    }
    case 'Q': /* BINPERSID */
        if (!(v = pop(p))) return -1;
        if (!p->hooks.persistent_load) return hr_fail(HR_EFORMAT, "persistent ids are not accepted here");
        return push(p, p->hooks.persistent_load(p, p->hooks.ctx, v));
    case 'P': { /* PERSID: the id is a text line */
        size_t n = 0;
        const char *s = read_line(p, &n);
        if (!s) return -1;
        if (!p->hooks.persistent_load) return hr_fail(HR_EFORMAT, "persistent ids are not accepted here");
        if (!(v = hr_pickle_str(p, HR_PK_STR, s, n))) return -1;
        return push(p, p->hooks.persistent_load(p, p->hooks.ctx, v));
    }
    case 'i': case 'o': case 0x81: case 0x92:
        return refuse(op_name(op), "it instantiates arbitrary classes");
    case 0x82: case 0x83: case 0x84:
        return refuse(op_name(op), "extension registry codes");
    case 0x96: case 0x97: case 0x98:
        return refuse(op_name(op), "out-of-band buffers");
    case 0x8f: case 0x90: case 0x91:
        return refuse(op_name(op), "sets are not part of a checkpoint");
    case 'F': case 'I': case 'L': case 'S': case 'V': case 'g': case 'p':
        return refuse(op_name(op), "text opcodes of pickle protocol 0; save with protocol 2 or later");
    default:
        return hr_fail(HR_EFORMAT, "unknown pickle opcode 0x%02x", op);
    }
}

hr_pk_value *hr_pickle_load(hr_pickle *p, const unsigned char *buf, size_t len, size_t *used)
{
    p->buf = buf;
    p->len = len;
    p->pos = 0;
    p->sp = 0;
    p->nmarks = 0;
    p->memo_count = 0;
    hr_pk_value *result = NULL;
    for (;;) {
        size_t at = p->pos;
        unsigned char op = at < len ? buf[at] : 0;
        int rc = step(p, &result);
        if (rc == 1) break;
        if (rc < 0) {
            const char *name = at < len ? op_name(op) : NULL;
            if (name) hr_error_prefix("%s: byte %zu (%s)", p->what, at, name);
            else hr_error_prefix("%s: byte %zu", p->what, at);
            return NULL;
        }
    }
    if (used) *used = p->pos;
    return result;
}
