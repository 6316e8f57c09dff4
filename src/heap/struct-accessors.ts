/**
 * Struct accessors: the code a cursor runs. For every field, a getter and a setter compiled with
 * new Function from the field's offset (a number, the only thing spliced into the source), so
 * that each accessor is its own function with monomorphic call sites into the address space's
 * typed accessors and allocates nothing; the value checks the setters inline; array cursor
 * classes compiled per array type; and the slower encodings (strings, bytes) they call.
 */
import type { AddressSpace } from '../memory/address-space.js';
import { ErrorCodes, MemfabricError, invalidArgument, outOfRange } from '../errors.js';
import type { Struct } from './struct.js';
import {
  show,
  type ArrayCursor,
  type ArrayType,
  type BytesType,
  type CursorMethods,
  type FieldType,
  type Fields,
  type RefType,
  type ScalarName,
  type ScalarType,
  type StringType,
} from './struct-fields.js';
import { readTag, wrongTypeError } from './type-tags.js';

// -----------------------------------------------------------------------------------------
// Value checks and the slower encodings (strings, bytes), shared by the generated accessors

/** Per-field constants handed to generated code: its label for messages, its type, its scratch. */
export interface FieldInfo {
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

export function badValue(label: string, value: unknown, expected: string): never {
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
export const helpers = {
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
export function validate(type: FieldType, value: unknown, label: string): void {
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
      if (value instanceof arrayCursorClass(type)) return; // copied whole by setAll
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

/** The state every struct cursor carries (the generated code reads _base and _subs). */
export interface CursorState {
  space: AddressSpace;
  address: number;
  _base: number;
  _subs: unknown[];
}

function compile<T>(source: string, info: FieldInfo): T {
  return new Function('h', 'k', source)(helpers, info) as T;
}

/** A getter/setter pair for a field at body offset `offset`; `sub` indexes this._subs. */
export function fieldAccessor(
  type: FieldType,
  offset: number,
  info: FieldInfo,
  sub: number,
): PropertyDescriptor {
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
export function subCursor(type: FieldType, space: AddressSpace, label: string): unknown {
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
      if (values instanceof ArrayCursorImpl) {
        // The same array type from another cursor (this heap or another): copy its bytes.
        const bytes = Buffer.allocUnsafe(type.byteLength);
        values.space.read(values._base, bytes);
        this.space.write(this._base, bytes);
        return;
      }
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
export function plainOf(type: FieldType, value: unknown): unknown {
  if (type.kind === 'struct') return (value as CursorMethods<Fields>).toObject();
  if (type.kind === 'array') return (value as ArrayCursor<FieldType>).toArray();
  return value;
}
