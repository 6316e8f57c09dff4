/**
 * Structs: fixed-layout records in the heap, declared once and read and written through
 * cursors, so that users never compute byte offsets.
 *
 *   const Point = defineStruct('Point', { x: f64, y: f64, label: string(16) });
 *   const address = Point.alloc(heap, { x: 1, y: 2 });
 *   const p = Point.cursor(heap).at(address);   // checks the type tag once
 *   p.x += 1;                                    // a readF64 and a writeF64, nothing allocated
 *
 * Layout. Fields are laid out in declaration order, each at the next offset that is a
 * multiple of its alignment (natural alignment: a type's alignment is its size for scalars,
 * the prefix width for strings, 1 for bytes, 8 for refs, the largest member's for structs and
 * arrays); a struct's inline size is rounded up to its alignment so array elements stay
 * aligned. The layout is a pure function of the declaration: a heap reopened by a program
 * with the same declaration reads the same bytes, and nothing about schemas is stored.
 *
 * Type tag. Every instance allocated with `alloc` begins with a 4-byte tag, a hash of the
 * schema's name and full layout (type-tags.ts), then padding to the body's alignment (so 4
 * bytes when the body holds 8-byte fields), then the body. `cursor.at(address)` and `free`
 * compare the tag, one 32-bit read, and throw MF_HEAP_TYPE on a mismatch: an address of
 * another schema, of a blob, of freed memory, or of this schema's older declaration (a
 * changed declaration is a different hash). Structs nested inline, and array elements, have
 * no tag of their own: they are part of their parent.
 *
 * Encodings (little-endian throughout):
 * - u8 … f64 as the space's typed accessors; u64 and i64 read and write bigints;
 * - bool: one byte, 0 or 1;
 * - string(maxBytes): UTF-8, length-prefixed (the prefix is 1 byte up to 255 maxBytes, 2 up to
 *   65535, else 4), the unused tail zeroed. Length-prefixed rather than NUL-padded so strings
 *   may contain U+0000. A lone surrogate is stored as U+FFFD, as TextEncoder does;
 * - bytes(n): n raw bytes;
 * - ref(Target): a heap address as a u64 (0 is null), read and written as a number;
 * - array(type, n): n elements at a fixed stride.
 *
 * Cursors. One cursor class is generated per schema, with a getter and a setter per field on
 * its prototype whose bodies are compiled (new Function) with the field's offset as a
 * constant: `p.x` is `this.space.readF64(this._base + 8)`. Each accessor is its own function,
 * so each call site stays monomorphic, and none allocates: numbers come back as numbers,
 * nested structs and arrays as sub-cursors the cursor made once and repositions. Only what
 * must be a new JS value allocates: strings, bigints, and the copy a bytes getter returns
 * (readBytes copies into the caller's buffer instead). Setters check the value first (a u8
 * gets an integer 0..255, a string fits its field, …) and throw MF_INVALID_ARGUMENT naming
 * the field before anything is written. Field names are validated identifiers and only
 * numbers are spliced into the generated code.
 */
import type { AddressSpace } from '../memory/address-space.js';
import { ErrorCodes, MemfabricError, invalidArgument, outOfRange } from '../errors.js';
import type { HeapMemory } from './memory.js';
import { hash32, isReservedTag, readTag, registerTag, wrongTypeError } from './type-tags.js';

// -----------------------------------------------------------------------------------------
// Field types

export type ScalarName = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64' | 'u64' | 'i64' | 'bool';

interface TypeBase {
  /** Bytes the type takes inline (in a struct body or an array element). */
  readonly byteLength: number;
  /** Alignment of its offset within a body. */
  readonly align: number;
  /** Canonical text of the type, hashed into the type tag of every struct that holds it. */
  readonly descriptor: string;
}

export interface ScalarType<N extends ScalarName = ScalarName> extends TypeBase {
  readonly kind: 'scalar';
  readonly name: N;
}
export interface StringType extends TypeBase {
  readonly kind: 'string';
  readonly maxBytes: number;
  readonly prefixBytes: 1 | 2 | 4;
}
export interface BytesType extends TypeBase {
  readonly kind: 'bytes';
  readonly length: number;
}
export interface RefType extends TypeBase {
  readonly kind: 'ref';
  /** Name of the struct the reference points to, or undefined for any heap object. */
  readonly target: string | undefined;
}
export interface ArrayType<E extends FieldType = FieldType> extends TypeBase {
  readonly kind: 'array';
  readonly element: E;
  readonly length: number;
  /** Bytes from one element to the next. */
  readonly stride: number;
}
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type FieldType = ScalarType | StringType | BytesType | RefType | ArrayType<any> | Struct<any>;
export type Fields = Record<string, FieldType>;

/** Largest string, bytes or array field (elements), and the largest struct body. */
const FIELD_BYTES_MAX = 1 << 24;
const BODY_BYTES_MAX = 1 << 30;
/** Bytes of the type tag at the start of every allocated instance. */
export const STRUCT_TAG_BYTES = 4;

function scalar<N extends ScalarName>(name: N, byteLength: number): ScalarType<N> {
  return Object.freeze({ kind: 'scalar', name, byteLength, align: byteLength, descriptor: name });
}

export const u8 = scalar('u8', 1);
export const i8 = scalar('i8', 1);
export const u16 = scalar('u16', 2);
export const i16 = scalar('i16', 2);
export const u32 = scalar('u32', 4);
export const i32 = scalar('i32', 4);
export const f32 = scalar('f32', 4);
export const f64 = scalar('f64', 8);
export const u64 = scalar('u64', 8);
export const i64 = scalar('i64', 8);
export const bool = scalar('bool', 1);

function checkCount(what: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 1 || n > FIELD_BYTES_MAX) {
    throw invalidArgument(`${what} must be a whole number from 1 to ${FIELD_BYTES_MAX}, got ${String(n)}`);
  }
}

/** A UTF-8 string of at most `maxBytes` bytes, stored length-prefixed in a fixed-size field. */
export function string(maxBytes: number): StringType {
  checkCount('string(maxBytes): maxBytes', maxBytes);
  const prefixBytes = maxBytes <= 0xff ? 1 : maxBytes <= 0xffff ? 2 : 4;
  return Object.freeze({
    kind: 'string',
    maxBytes,
    prefixBytes,
    byteLength: prefixBytes + maxBytes,
    align: prefixBytes,
    descriptor: `string(${maxBytes})`,
  });
}

/** Exactly `length` raw bytes. */
export function bytes(length: number): BytesType {
  checkCount('bytes(length): length', length);
  return Object.freeze({
    kind: 'bytes',
    length,
    byteLength: length,
    align: 1,
    descriptor: `bytes(${length})`,
  });
}

/**
 * A reference to another heap object: its address, 0 for none. `target` (a struct, or a
 * struct's name for a struct that refers to itself or is declared later) documents what it
 * points to and is part of the schema's identity; omit it for "any heap object". The target's
 * type is checked when the reference is followed (`Target.cursor(heap).at(p.next)`).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function ref(target?: Struct<any> | string): RefType {
  if (typeof target === 'string') checkName('ref(target): a struct name', target);
  const name = target === undefined ? undefined : typeof target === 'string' ? target : target.name;
  return Object.freeze({
    kind: 'ref',
    target: name,
    byteLength: 8,
    align: 8,
    descriptor: `ref(${name ?? '*'})`,
  });
}

/** `length` elements of `element`, inline. */
export function array<E extends FieldType>(element: E, length: number): ArrayType<E> {
  checkFieldType('array(element, length): element', element);
  checkCount('array(element, length): length', length);
  const stride = alignUp(element.byteLength, element.align);
  if (stride * length > BODY_BYTES_MAX) {
    throw invalidArgument(
      `array of ${length} × ${stride} bytes exceeds ${BODY_BYTES_MAX} bytes; use a smaller array`,
    );
  }
  return Object.freeze({
    kind: 'array',
    element,
    length,
    stride,
    byteLength: stride * length,
    align: element.align,
    descriptor: `[${element.descriptor};${length}]`,
  });
}

// -----------------------------------------------------------------------------------------
// Value types as TypeScript sees them

/** What reading a field of type T returns. */
export type Get<T> = T extends ScalarType<'u64'> | ScalarType<'i64'>
  ? bigint
  : T extends ScalarType<'bool'>
    ? boolean
    : T extends ScalarType
      ? number
      : T extends StringType
        ? string
        : T extends BytesType
          ? Uint8Array
          : T extends RefType
            ? number
            : T extends Struct<infer F>
              ? StructCursor<F>
              : T extends ArrayType<infer E>
                ? ArrayCursor<E>
                : never;

/** What may be written to a field of type T (plain objects and arrays for structs and arrays). */
export type Init<T> =
  T extends Struct<infer F> ? StructInit<F> : T extends ArrayType<infer E> ? ArrayLike<Init<E>> : Get<T>;

/** A plain copy of a value of type T (toObject / toArray). */
export type Plain<T> =
  T extends Struct<infer F> ? StructObject<F> : T extends ArrayType<infer E> ? Array<Plain<E>> : Get<T>;

export type StructInit<F extends Fields> = { [K in keyof F]?: Init<F[K]> };
export type StructObject<F extends Fields> = { [K in keyof F]: Plain<F[K]> };

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Composite = Struct<any> | ArrayType<any>;
type ByteFieldKeys<F extends Fields> = {
  [K in keyof F]: F[K] extends StringType | BytesType ? K : never;
}[keyof F];

export interface CursorMethods<F extends Fields> {
  /** The address `at()` positioned this cursor on (0 for a struct nested in another). */
  readonly address: number;
  readonly schema: Struct<F>;
  /** Positions the cursor on an instance; MF_HEAP_TYPE when the address holds no such struct. */
  at(address: number): StructCursor<F>;
  /** Writes the given fields; every value is checked before any is written. */
  set(values: StructInit<F>): StructCursor<F>;
  /** A plain object copy of every field (allocates). */
  toObject(): StructObject<F>;
  /** Copies a string field's UTF-8 bytes (or a bytes field) into `dst`; returns the byte count. */
  readBytes(field: ByteFieldKeys<F> & string, dst: Uint8Array): number;
  /** Writes a string field from UTF-8 bytes (not validated as UTF-8), or a bytes field. */
  writeBytes(field: ByteFieldKeys<F> & string, src: Uint8Array): void;
}

/** A cursor over instances of a schema: one property per field, plus the methods above. */
export type StructCursor<F extends Fields> = {
  -readonly [K in keyof F as F[K] extends Composite ? never : K]: Get<F[K]>;
} & { readonly [K in keyof F as F[K] extends Composite ? K : never]: Get<F[K]> } & CursorMethods<F>;

/**
 * An array field seen through a reusable cursor. `get(i)` of a struct or array element returns
 * the same sub-cursor each time, repositioned: read it before the next `get`.
 */
export interface ArrayCursor<E extends FieldType> {
  readonly length: number;
  get(index: number): Get<E>;
  set(index: number, value: Init<E>): void;
  /** Writes every element; `values.length` must equal the array's length. */
  setAll(values: ArrayLike<Init<E>>): void;
  /** A plain array copy (allocates). */
  toArray(): Array<Plain<E>>;
  /** For string and bytes elements: copies element `index`'s bytes into `dst`; returns the count. */
  readBytes(index: number, dst: Uint8Array): number;
  writeBytes(index: number, src: Uint8Array): void;
}

// -----------------------------------------------------------------------------------------
// Value checks and the slower encodings (strings, bytes), shared by the generated accessors

/** Per-field constants handed to generated code: its label for messages, its type, its scratch. */
interface FieldInfo {
  readonly label: string;
  readonly type: FieldType;
  /** Body-relative offset within the owning struct (or 0 for an array element). */
  readonly offset: number;
  /** prefix + maxBytes bytes for strings, reused by every write of this field (one thread). */
  scratch: Buffer | undefined;
}

/** JS source of a test that is true when `v` is NOT a valid value for a scalar or ref type. */
function badValueTest(type: ScalarType | RefType): string {
  if (type.kind === 'ref') {
    return "typeof v !== 'number' || !(v >= 0 && v <= 9007199254740991 && Math.floor(v) === v)";
  }
  switch (type.name) {
    case 'u8':
      return "typeof v !== 'number' || (v & 255) !== v";
    case 'i8':
      return "typeof v !== 'number' || ((v << 24) >> 24) !== v";
    case 'u16':
      return "typeof v !== 'number' || (v & 65535) !== v";
    case 'i16':
      return "typeof v !== 'number' || ((v << 16) >> 16) !== v";
    case 'u32':
      return "typeof v !== 'number' || (v >>> 0) !== v";
    case 'i32':
      return "typeof v !== 'number' || (v | 0) !== v";
    case 'f32':
    case 'f64':
      return "typeof v !== 'number'";
    case 'u64':
      return "typeof v !== 'bigint' || v < 0n || v > 18446744073709551615n";
    case 'i64':
      return "typeof v !== 'bigint' || v < -9223372036854775808n || v > 9223372036854775807n";
    case 'bool':
      return "typeof v !== 'boolean'";
  }
}

const EXPECTED: Record<ScalarName | 'ref', string> = {
  u8: 'an integer from 0 to 255',
  i8: 'an integer from -128 to 127',
  u16: 'an integer from 0 to 65535',
  i16: 'an integer from -32768 to 32767',
  u32: 'an integer from 0 to 4294967295',
  i32: 'an integer from -2147483648 to 2147483647',
  f32: 'a number',
  f64: 'a number',
  u64: 'a bigint from 0n to 2n ** 64n - 1n',
  i64: 'a bigint from -(2n ** 63n) to 2n ** 63n - 1n',
  bool: 'a boolean',
  ref: 'a heap address (a whole number ≥ 0; 0 for null)',
};

function show(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (value instanceof Uint8Array) return `a ${value.constructor.name} of ${value.length} bytes`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  return typeof value === 'object' && value !== null ? 'an object' : String(value);
}

function badValue(label: string, value: unknown, expected: string): never {
  throw invalidArgument(`${label} must be ${expected}, got ${show(value)}; nothing was written`);
}

/** JS source that reads a scalar or ref at address expression `a` from space `sp`. */
function readCode(type: ScalarType | RefType, a: string): string {
  if (type.kind === 'ref') return `(sp.readU32(${a}) + sp.readU32(${a} + 4) * 4294967296)`;
  const method = {
    u8: 'U8',
    i8: 'I8',
    u16: 'U16',
    i16: 'I16',
    u32: 'U32',
    i32: 'I32',
    f32: 'F32',
    f64: 'F64',
    u64: 'U64',
    i64: 'I64',
    bool: 'U8',
  }[type.name];
  return type.name === 'bool' ? `(sp.readU8(${a}) !== 0)` : `sp.read${method}(${a})`;
}

/** JS source that writes checked value `v` at address expression `a`. */
function writeCode(type: ScalarType | RefType, a: string): string {
  if (type.kind === 'ref')
    return `sp.writeU32(${a}, v >>> 0); sp.writeU32(${a} + 4, (v / 4294967296) >>> 0);`;
  if (type.name === 'bool') return `sp.writeU8(${a}, v ? 1 : 0);`;
  const method = {
    u8: 'U8',
    i8: 'I8',
    u16: 'U16',
    i16: 'I16',
    u32: 'U32',
    i32: 'I32',
    f32: 'F32',
    f64: 'F64',
    u64: 'U64',
    i64: 'I64',
  }[type.name];
  return `sp.write${method}(${a}, v);`;
}

function stringScratch(info: FieldInfo, type: StringType): Buffer {
  return (info.scratch ??= Buffer.alloc(type.prefixBytes + type.maxBytes));
}

function readLength(sp: AddressSpace, address: number, type: StringType, label: string): number {
  const n =
    type.prefixBytes === 1
      ? sp.readU8(address)
      : type.prefixBytes === 2
        ? sp.readU16(address)
        : sp.readU32(address);
  if (n > type.maxBytes) {
    throw new MemfabricError(
      ErrorCodes.HEAP_CORRUPT,
      `${label} at address ${address} claims ${n} bytes but holds at most ${type.maxBytes}; the heap is damaged or the address is wrong`,
    );
  }
  return n;
}

/** Helpers the generated code calls (passed in as `h`). */
const helpers = {
  badValue(info: FieldInfo, value: unknown): never {
    const type = info.type as ScalarType | RefType;
    return badValue(info.label, value, EXPECTED[type.kind === 'ref' ? 'ref' : type.name]);
  },
  badIndex(label: string, length: number, index: unknown): never {
    throw outOfRange(
      `${label}[${show(index)}] is out of range; the array holds ${length} elements (0 to ${length - 1})`,
    );
  },
  wrongType(sp: AddressSpace, address: number, schema: Struct): never {
    const tag = readTag(sp, address);
    throw wrongTypeError(address, `a ${schema.name}`, tag);
  },
  readString(sp: AddressSpace, address: number, info: FieldInfo): string {
    const type = info.type as StringType;
    const n = readLength(sp, address, type, info.label);
    if (n === 0) return '';
    const scratch = stringScratch(info, type);
    sp.read(address + type.prefixBytes, scratch.subarray(0, n));
    return scratch.toString('utf8', 0, n);
  },
  writeString(sp: AddressSpace, address: number, value: unknown, info: FieldInfo): void {
    const type = info.type as StringType;
    checkString(info.label, type, value);
    const scratch = stringScratch(info, type);
    const n = scratch.write(value, type.prefixBytes, 'utf8');
    scratch.fill(0, type.prefixBytes + n);
    writePrefix(scratch, type, n);
    sp.write(address, scratch);
  },
  writeStringBytes(sp: AddressSpace, address: number, src: Uint8Array, info: FieldInfo): void {
    const type = info.type as StringType;
    if (!(src instanceof Uint8Array) || src.length > type.maxBytes) {
      badValue(info.label, src, `a Uint8Array of at most ${type.maxBytes} bytes`);
    }
    const scratch = stringScratch(info, type);
    scratch.set(src, type.prefixBytes);
    scratch.fill(0, type.prefixBytes + src.length);
    writePrefix(scratch, type, src.length);
    sp.write(address, scratch);
  },
  readBytesCopy(sp: AddressSpace, address: number, info: FieldInfo): Uint8Array {
    const out = new Uint8Array((info.type as BytesType).length);
    sp.read(address, out);
    return out;
  },
  writeBytes(sp: AddressSpace, address: number, value: unknown, info: FieldInfo): void {
    checkBytes(info.label, info.type as BytesType, value);
    sp.write(address, value);
  },
  /** Copies a string's or bytes field's bytes into dst without allocating when it can. */
  copyOut(sp: AddressSpace, address: number, dst: Uint8Array, info: FieldInfo): number {
    if (!(dst instanceof Uint8Array)) badValue(`readBytes(${info.label}) dst`, dst, 'a Uint8Array');
    const type = info.type;
    let from = address;
    let n: number;
    if (type.kind === 'string') {
      n = readLength(sp, address, type, info.label);
      from += type.prefixBytes;
    } else {
      n = (type as BytesType).length;
    }
    if (dst.length < n) {
      throw invalidArgument(
        `${info.label} holds ${n} bytes but dst has room for ${dst.length}; pass a larger buffer`,
      );
    }
    if (n === dst.length) sp.read(from, dst);
    else if (n <= 32) for (let i = 0; i < n; i++) dst[i] = sp.readU8(from + i);
    else sp.read(from, dst.subarray(0, n));
    return n;
  },
};

function writePrefix(scratch: Buffer, type: StringType, n: number): void {
  if (type.prefixBytes === 1) scratch[0] = n;
  else if (type.prefixBytes === 2) scratch.writeUInt16LE(n, 0);
  else scratch.writeUInt32LE(n, 0);
}

function checkString(label: string, type: StringType, value: unknown): asserts value is string {
  if (typeof value !== 'string') badValue(label, value, `a string of at most ${type.maxBytes} UTF-8 bytes`);
  const n = Buffer.byteLength(value, 'utf8');
  if (n > type.maxBytes) {
    throw invalidArgument(
      `${label} holds at most ${type.maxBytes} UTF-8 bytes, and this string takes ${n}; ` +
        'shorten it or declare the field with a larger string(maxBytes); nothing was written',
    );
  }
}

function checkBytes(label: string, type: BytesType, value: unknown): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array) || value.length !== type.length) {
    badValue(label, value, `a Uint8Array of exactly ${type.length} bytes`);
  }
}

/** Per scalar type, a compiled `(v) => v is bad` from the same source the setters inline. */
const scalarChecks = new Map<string, (v: unknown) => boolean>();
function scalarCheck(type: ScalarType | RefType): (v: unknown) => boolean {
  let check = scalarChecks.get(type.descriptor);
  if (!check) {
    check = new Function('v', `return ${badValueTest(type)};`) as (v: unknown) => boolean;
    scalarChecks.set(type.descriptor, check);
  }
  return check;
}

/** Checks a value for a field of any type, recursively, without writing (for set / setAll). */
function validate(type: FieldType, value: unknown, label: string): void {
  switch (type.kind) {
    case 'scalar':
    case 'ref':
      if (scalarCheck(type)(value)) badValue(label, value, EXPECTED[type.kind === 'ref' ? 'ref' : type.name]);
      return;
    case 'string':
      return checkString(label, type, value);
    case 'bytes':
      return checkBytes(label, type, value);
    case 'array': {
      const list = value as ArrayLike<unknown> | null;
      if (typeof list !== 'object' || list === null || list.length !== type.length) {
        badValue(label, value, `an array of exactly ${type.length} elements`);
      }
      for (let i = 0; i < type.length; i++) validate(type.element, list[i], `${label}[${i}]`);
      return;
    }
    case 'struct':
      return type.validate(value, label);
  }
}

// -----------------------------------------------------------------------------------------
// Generated accessors

interface CursorState {
  space: AddressSpace;
  address: number;
  _base: number;
  _subs: unknown[];
}

function compile<T>(source: string, info: FieldInfo): T {
  return new Function('h', 'k', source)(helpers, info) as T;
}

/** A getter/setter pair for a field at body offset `offset`; `sub` indexes this._subs. */
function fieldAccessor(type: FieldType, offset: number, info: FieldInfo, sub: number): PropertyDescriptor {
  const a = `this._base + ${offset}`;
  switch (type.kind) {
    case 'scalar':
    case 'ref':
      return compile(
        `return {
          get() { const sp = this.space; return ${readCode(type, a)}; },
          set(v) { if (${badValueTest(type)}) h.badValue(k, v); const sp = this.space; ${writeCode(type, a)} },
        };`,
        info,
      );
    case 'string':
      return compile(
        `return {
          get() { return h.readString(this.space, ${a}, k); },
          set(v) { h.writeString(this.space, ${a}, v, k); },
        };`,
        info,
      );
    case 'bytes':
      return compile(
        `return {
          get() { return h.readBytesCopy(this.space, ${a}, k); },
          set(v) { h.writeBytes(this.space, ${a}, v, k); },
        };`,
        info,
      );
    case 'struct':
    case 'array':
      return compile(
        `return {
          get() { const c = this._subs[${sub}]; c._base = ${a}; return c; },
          set(v) { const c = this._subs[${sub}]; c._base = ${a}; c.${type.kind === 'struct' ? 'set' : 'setAll'}(v); },
        };`,
        info,
      );
  }
}

/** A reusable cursor for a nested struct or array type, over `space`; `label` names it in errors. */
function subCursor(type: FieldType, space: AddressSpace, label: string): unknown {
  if (type.kind === 'struct')
    return new (type as unknown as { Cursor: new (s: AddressSpace) => unknown }).Cursor(space);
  if (type.kind === 'array') return new (arrayCursorClass(type))(space, label);
  return null;
}

type ArrayCursorClass = new (space: AddressSpace, label: string) => unknown;
const arrayClasses = new WeakMap<ArrayType, ArrayCursorClass>();

/**
 * The cursor class of an array type: get/set compiled with its stride and length. A cursor
 * instance carries its field's label (`_label`) and an element FieldInfo (`_e`) for messages
 * and the string scratch, both made once per cursor.
 */
function arrayCursorClass(type: ArrayType): ArrayCursorClass {
  const cached = arrayClasses.get(type);
  if (cached) return cached;
  const element = type.element as FieldType;
  class ArrayCursorImpl {
    space: AddressSpace;
    _base = Number.NaN;
    _sub: unknown;
    _label: string;
    _e: FieldInfo;
    constructor(space: AddressSpace, label: string) {
      this.space = space;
      this._label = label;
      this._e = { label: `${label}[]`, type: element, offset: 0, scratch: undefined };
      this._sub = subCursor(element, space, `${label}[]`);
    }
    get length(): number {
      return type.length;
    }
    setAll(values: ArrayLike<unknown>): void {
      validate(type, values, this._label);
      const self = this as unknown as ArrayCursor<FieldType>;
      for (let i = 0; i < type.length; i++) self.set(i, values[i] as never);
    }
    toArray(): unknown[] {
      const self = this as unknown as ArrayCursor<FieldType>;
      const out: unknown[] = [];
      for (let i = 0; i < type.length; i++) out.push(plainOf(element, self.get(i)));
      return out;
    }
  }
  const index = `if (typeof i !== 'number' || (i >>> 0) !== i || i >= ${type.length}) h.badIndex(this._label, ${type.length}, i); const a = this._base + i * ${type.stride};`;
  let body: string;
  switch (element.kind) {
    case 'scalar':
    case 'ref':
      body = `return {
        get(i) { ${index} const sp = this.space; return ${readCode(element, 'a')}; },
        set(i, v) { ${index} if (${badValueTest(element)}) h.badValue(this._e, v); const sp = this.space; ${writeCode(element, 'a')} },
      };`;
      break;
    case 'string':
      body = `return {
        get(i) { ${index} return h.readString(this.space, a, this._e); },
        set(i, v) { ${index} h.writeString(this.space, a, v, this._e); },
        readBytes(i, dst) { ${index} return h.copyOut(this.space, a, dst, this._e); },
        writeBytes(i, src) { ${index} h.writeStringBytes(this.space, a, src, this._e); },
      };`;
      break;
    case 'bytes':
      body = `return {
        get(i) { ${index} return h.readBytesCopy(this.space, a, this._e); },
        set(i, v) { ${index} h.writeBytes(this.space, a, v, this._e); },
        readBytes(i, dst) { ${index} return h.copyOut(this.space, a, dst, this._e); },
        writeBytes(i, src) { ${index} h.writeBytes(this.space, a, src, this._e); },
      };`;
      break;
    default:
      body = `return {
        get(i) { ${index} const c = this._sub; c._base = a; return c; },
        set(i, v) { ${index} const c = this._sub; c._base = a; c.${element.kind === 'struct' ? 'set' : 'setAll'}(v); },
      };`;
  }
  const methods = new Function('h', body)(helpers) as Record<string, unknown>;
  for (const [name, fn] of Object.entries(methods)) {
    Object.defineProperty(ArrayCursorImpl.prototype, name, { value: fn });
  }
  if (!('readBytes' in methods)) {
    const unsupported = (): never => {
      throw invalidArgument('readBytes/writeBytes apply to arrays of string or bytes elements only');
    };
    Object.defineProperty(ArrayCursorImpl.prototype, 'readBytes', { value: unsupported });
    Object.defineProperty(ArrayCursorImpl.prototype, 'writeBytes', { value: unsupported });
  }
  arrayClasses.set(type, ArrayCursorImpl);
  return ArrayCursorImpl;
}

/** Plain copy of a value read through a getter (sub-cursors become objects and arrays). */
function plainOf(type: FieldType, value: unknown): unknown {
  if (type.kind === 'struct') return (value as CursorMethods<Fields>).toObject();
  if (type.kind === 'array') return (value as ArrayCursor<FieldType>).toArray();
  return value;
}

// -----------------------------------------------------------------------------------------
// Struct

/** A field as laid out: `offset` counts from the start of an allocated instance (its tag). */
export interface FieldLayout {
  readonly name: string;
  readonly type: FieldType;
  readonly offset: number;
  readonly byteLength: number;
}

const NAME_PATTERN = /^[A-Za-z$][\w$]*(\.[A-Za-z$][\w$]*)*$/;
const FIELD_PATTERN = /^[A-Za-z$][\w$]*$/;
/** Names a field may not take because the cursor uses them. */
const RESERVED_FIELDS = new Set([
  'at',
  'address',
  'schema',
  'set',
  'toObject',
  'readBytes',
  'writeBytes',
  'space',
  'constructor',
  'prototype',
  'toString',
  'toLocaleString',
  'valueOf',
  'hasOwnProperty',
  'isPrototypeOf',
  'propertyIsEnumerable',
]);
/** Type id → descriptor of every schema declared in this process, to refuse hash collisions. */
const declared = new Map<number, string>();

function checkName(what: string, name: unknown): void {
  if (typeof name !== 'string' || name.length > 200 || !NAME_PATTERN.test(name)) {
    throw invalidArgument(`${what} must be an identifier (dots allowed between parts), got ${show(name)}`);
  }
}

function checkFieldType(what: string, type: unknown): asserts type is FieldType {
  const kind = (type as { kind?: unknown } | null)?.kind;
  if (!['scalar', 'string', 'bytes', 'ref', 'array', 'struct'].includes(kind as string)) {
    throw invalidArgument(
      `${what} must be a field type (u8 … f64, u64, i64, bool, string(n), bytes(n), ref(), array(), or a struct)`,
    );
  }
}

function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/**
 * A declared schema. Make one with defineStruct. A bare `Struct` (the default parameter is
 * `any`) accepts a schema of any fields, so helpers can take structs generically.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export class Struct<F extends Fields = any> {
  readonly kind = 'struct' as const;
  /** 32-bit tag stored at the start of every instance: a hash of name and layout. */
  readonly typeId: number;
  /** Bytes of an allocated instance: the tag, padding to the body's alignment, the body. */
  readonly size: number;
  /** Bytes the struct takes nested inline or as an array element (no tag), a multiple of align. */
  readonly byteLength: number;
  readonly align: number;
  /** Offset of the body (the first field's region) in an allocated instance: 4 or 8. */
  readonly bodyOffset: number;
  readonly fields: readonly FieldLayout[];
  /** Canonical text of the layout that the type id hashes. */
  readonly descriptor: string;
  /** @internal the generated cursor class */
  readonly Cursor: new (space: AddressSpace) => StructCursor<F>;
  private readonly byName = new Map<string, { type: FieldType; offset: number; info: FieldInfo }>();
  private readonly cursors = new WeakMap<AddressSpace, StructCursor<F>>();

  /** @internal use defineStruct */
  constructor(
    readonly name: string,
    declaration: F,
  ) {
    checkName('defineStruct(name): name', name);
    if (typeof declaration !== 'object' || declaration === null) {
      throw invalidArgument(`defineStruct('${name}', fields): fields must be an object of field types`);
    }
    const layouts: FieldLayout[] = [];
    const parts: string[] = [];
    let offset = 0;
    let align = 1;
    const infos: FieldInfo[] = [];
    for (const [field, type] of Object.entries(declaration)) {
      if (!FIELD_PATTERN.test(field) || RESERVED_FIELDS.has(field)) {
        throw invalidArgument(
          `${name}.${field}: a field name must be an identifier not starting with _ and not one of ${[...RESERVED_FIELDS].join(', ')}`,
        );
      }
      checkFieldType(`${name}.${field}`, type);
      offset = alignUp(offset, type.align);
      align = Math.max(align, type.align);
      layouts.push({ name: field, type, offset, byteLength: type.byteLength });
      parts.push(`${field}:${type.descriptor}@${offset}`);
      infos.push({ label: `${name}.${field}`, type, offset, scratch: undefined });
      offset += type.byteLength;
      if (offset > BODY_BYTES_MAX) throw invalidArgument(`struct ${name} exceeds ${BODY_BYTES_MAX} bytes`);
    }
    this.align = align;
    this.byteLength = alignUp(offset, align);
    this.bodyOffset = alignUp(STRUCT_TAG_BYTES, align);
    this.size = this.bodyOffset + this.byteLength;
    this.fields = Object.freeze(
      layouts.map((l) => Object.freeze({ ...l, offset: l.offset + this.bodyOffset })),
    );
    this.descriptor = `${name}{${parts.join(',')}}`;
    this.typeId = typeIdOf(this.descriptor, this.byteLength);
    for (const [i, layout] of layouts.entries()) {
      this.byName.set(layout.name, { type: layout.type, offset: layout.offset, info: infos[i]! });
    }
    this.Cursor = this.makeCursorClass(layouts, infos);
    Object.freeze(this);
  }

  /** A cursor over this schema's instances in `memory` (a heap, or its address space). */
  cursor(memory: HeapMemory | AddressSpace): StructCursor<F> {
    return new this.Cursor(spaceOf(memory));
  }

  /** Offset of a field from the start of an allocated instance. */
  offsetOf(field: keyof F & string): number {
    const entry = this.byName.get(field);
    if (!entry) throw invalidArgument(`${this.name} has no field "${field}"`);
    return entry.offset + this.bodyOffset;
  }

  /** True when `address` holds an instance of this schema (its tag matches). */
  is(memory: HeapMemory | AddressSpace, address: number): boolean {
    return readTag(spaceOf(memory), address) === this.typeId;
  }

  /**
   * Allocates a zero-filled instance, tags it, writes `values` if given, returns its address.
   * The values are checked before anything is allocated.
   */
  alloc(memory: HeapMemory, values?: StructInit<F>): number {
    if (values !== undefined) this.validate(values, this.name);
    const space = memory.space;
    const address = memory.allocator.alloc(this.size);
    try {
      space.writeZeroes(address, this.size);
      space.writeU32(address, this.typeId);
      if (values !== undefined) this.cachedCursor(space).at(address).set(values);
    } catch (error) {
      memory.allocator.free(address);
      throw error;
    }
    return address;
  }

  /**
   * Frees an instance. MF_HEAP_TYPE when the address holds another kind of value;
   * MF_HEAP_BAD_FREE when it is not a live object at all (a double free).
   */
  free(memory: HeapMemory, address: number): void {
    const space = memory.space;
    const tag = readTag(space, address);
    if (tag !== this.typeId) {
      if (address !== 0) memory.allocator.usableSize(address);
      throw wrongTypeError(address, `a ${this.name}`, tag);
    }
    // Clear the tag first, so a dangling cursor.at() of the freed address fails its check.
    space.writeU32(address, 0);
    try {
      memory.allocator.free(address);
    } catch (error) {
      space.writeU32(address, this.typeId);
      throw error;
    }
  }

  /** @internal Checks a plain value for this struct without writing (MF_INVALID_ARGUMENT). */
  validate(value: unknown, label: string): void {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      badValue(label, value, `an object with fields of ${this.name}`);
    }
    for (const key of Object.keys(value)) {
      const entry = this.byName.get(key);
      if (!entry) {
        throw invalidArgument(
          `${label}: ${this.name} has no field "${key}" (its fields: ${[...this.byName.keys()].join(', ')}); nothing was written`,
        );
      }
      const v = (value as Record<string, unknown>)[key];
      if (v !== undefined)
        validate(entry.type, v, label === this.name ? entry.info.label : `${label}.${key}`);
    }
  }

  private cachedCursor(space: AddressSpace): StructCursor<F> {
    let cursor = this.cursors.get(space);
    if (!cursor) {
      cursor = new this.Cursor(space);
      this.cursors.set(space, cursor);
    }
    return cursor;
  }

  private makeCursorClass(
    layouts: FieldLayout[],
    infos: FieldInfo[],
  ): new (space: AddressSpace) => StructCursor<F> {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const schema = this;
    const byName = this.byName;
    class StructCursorImpl implements CursorState {
      space: AddressSpace;
      address = 0;
      _base = Number.NaN;
      _subs: unknown[];
      constructor(space: AddressSpace) {
        this.space = space;
        this._subs = layouts.map((layout, i) => subCursor(layout.type, space, infos[i]!.label));
      }
      get schema(): Struct<F> {
        return schema;
      }
      set(values: StructInit<F>): this {
        schema.validate(values, schema.name);
        const self = this as unknown as Record<string, unknown>;
        for (const key of Object.keys(values)) {
          const v = (values as Record<string, unknown>)[key];
          if (v !== undefined) self[key] = v;
        }
        return this;
      }
      toObject(): StructObject<F> {
        const self = this as unknown as Record<string, unknown>;
        const out: Record<string, unknown> = {};
        for (const layout of layouts) out[layout.name] = plainOf(layout.type, self[layout.name]);
        return out as StructObject<F>;
      }
      readBytes(field: string, dst: Uint8Array): number {
        const entry = byteField(field);
        return helpers.copyOut(this.space, this._base + entry.offset, dst, entry.info);
      }
      writeBytes(field: string, src: Uint8Array): void {
        const entry = byteField(field);
        const address = this._base + entry.offset;
        if (entry.type.kind === 'string') helpers.writeStringBytes(this.space, address, src, entry.info);
        else helpers.writeBytes(this.space, address, src, entry.info);
      }
    }
    const byteField = (field: string): { type: FieldType; offset: number; info: FieldInfo } => {
      const entry = byName.get(field);
      if (!entry || (entry.type.kind !== 'string' && entry.type.kind !== 'bytes')) {
        throw invalidArgument(
          `${this.name}.${field} is not a string or bytes field; readBytes/writeBytes apply to those only`,
        );
      }
      return entry;
    };
    const at = new Function(
      'h',
      'schema',
      `return function at(a) {
        if (typeof a !== 'number' || a === 0 || this.space.readU32(a) !== ${this.typeId}) h.wrongType(this.space, a, schema);
        this.address = a;
        this._base = a + ${this.bodyOffset};
        return this;
      };`,
    )(helpers, this) as (address: number) => unknown;
    Object.defineProperty(StructCursorImpl.prototype, 'at', { value: at });
    for (const [i, layout] of layouts.entries()) {
      const descriptor = fieldAccessor(layout.type, layout.offset, infos[i]!, i);
      Object.defineProperty(StructCursorImpl.prototype, layout.name, {
        ...descriptor,
        enumerable: true,
        configurable: false,
      });
    }
    return StructCursorImpl as unknown as new (space: AddressSpace) => StructCursor<F>;
  }
}

function spaceOf(memory: HeapMemory | AddressSpace): AddressSpace {
  return 'allocator' in memory ? memory.space : memory;
}

function typeIdOf(descriptor: string, byteLength: number): number {
  const text = `memfabric.struct/1 ${descriptor} ${byteLength}`;
  let id = hash32(text);
  // Steer clear of the reserved tags (0, the blob tags) deterministically.
  for (let salt = 1; isReservedTag(id); salt++) id = hash32(`${text}#${salt}`);
  const known = declared.get(id);
  if (known !== undefined && known !== text) {
    throw invalidArgument(
      `the schema ${descriptor} has the same type id as ${known}; rename one of the two structs`,
    );
  }
  declared.set(id, text);
  return id;
}

/**
 * Declares a struct schema. The same declaration (name, field names, order and types) always
 * gives the same layout and type id, in any process, so instances written by one run are read
 * by the next. Any change to it makes a new type: old instances then fail `at()` with
 * MF_HEAP_TYPE rather than being misread.
 */
export function defineStruct<F extends Fields>(name: string, fields: F): Struct<F> {
  const struct = new Struct(name, fields);
  registerTag(struct.typeId, `a ${name} (struct)`);
  return struct;
}
