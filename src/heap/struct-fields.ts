/**
 * Struct field types: the scalar types, string(n), bytes(n), ref(), array(), and (in struct.ts)
 * structs themselves, each with its inline size, alignment and the canonical descriptor that
 * goes into a schema's type id; and the TypeScript types of the values a cursor reads and takes.
 */
import { invalidArgument } from '../errors.js';
import type { Struct } from './struct.js';

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
export const FIELD_BYTES_MAX = 1 << 24;
export const BODY_BYTES_MAX = 1 << 30;
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
  T extends Struct<infer F>
    ? StructInit<F> | StructCursor<F>
    : T extends ArrayType<infer E>
      ? ArrayLike<Init<E>> | ArrayCursor<E>
      : Get<T>;

/** A plain copy of a value of type T (toObject / toArray). */
export type Plain<T> =
  T extends Struct<infer F> ? StructObject<F> : T extends ArrayType<infer E> ? Array<Plain<E>> : Get<T>;

export type StructInit<F extends Fields> = { [K in keyof F]?: Init<F[K]> };
export type StructObject<F extends Fields> = { [K in keyof F]: Plain<F[K]> };

export type ByteFieldKeys<F extends Fields> = {
  [K in keyof F]: F[K] extends StringType | BytesType ? K : never;
}[keyof F];

export interface CursorMethods<F extends Fields> {
  /** The address `at()` positioned this cursor on (0 for a struct nested in another). */
  readonly address: number;
  readonly schema: Struct<F>;
  /** Positions the cursor on an instance; MF_HEAP_TYPE when the address holds no such struct. */
  at(address: number): StructCursor<F>;
  /**
   * Writes the given fields; every value is checked before any is written. Given a cursor of
   * the same schema (`a.set(b)`, or `line.start = other.start` for a nested struct), copies it.
   */
  set(values: StructInit<F> | StructCursor<F>): StructCursor<F>;
  /** A plain object copy of every field (allocates). */
  toObject(): StructObject<F>;
  /** Copies a string field's UTF-8 bytes (or a bytes field) into `dst`; returns the byte count. */
  readBytes(field: ByteFieldKeys<F> & string, dst: Uint8Array): number;
  /** Writes a string field from UTF-8 bytes (not validated as UTF-8), or a bytes field. */
  writeBytes(field: ByteFieldKeys<F> & string, src: Uint8Array): void;
}

/** A cursor over instances of a schema: one property per field, plus the methods above. */
export type StructCursor<F extends Fields> = {
  -readonly [K in keyof F]: Get<F[K]>;
} & CursorMethods<F>;

/**
 * An array field seen through a reusable cursor. `get(i)` of a struct or array element returns
 * the same sub-cursor each time, repositioned: read it before the next `get`.
 */
export interface ArrayCursor<E extends FieldType> {
  readonly length: number;
  get(index: number): Get<E>;
  set(index: number, value: Init<E>): void;
  /**
   * Writes every element; `values.length` must equal the array's length. Given a cursor of the
   * same array field type (`a.tags = b.tags`), copies it.
   */
  setAll(values: ArrayLike<Init<E>> | ArrayCursor<E>): void;
  /** A plain array copy (allocates). */
  toArray(): Array<Plain<E>>;
  /** For string and bytes elements: copies element `index`'s bytes into `dst`; returns the count. */
  readBytes(index: number, dst: Uint8Array): number;
  writeBytes(index: number, src: Uint8Array): void;
}

const NAME_PATTERN = /^[A-Za-z$][\w$]*(\.[A-Za-z$][\w$]*)*$/;

export function checkName(what: string, name: unknown): void {
  if (typeof name !== 'string' || name.length > 200 || !NAME_PATTERN.test(name)) {
    throw invalidArgument(`${what} must be an identifier (dots allowed between parts), got ${show(name)}`);
  }
}

export function checkFieldType(what: string, type: unknown): asserts type is FieldType {
  const kind = (type as { kind?: unknown } | null)?.kind;
  if (!['scalar', 'string', 'bytes', 'ref', 'array', 'struct'].includes(kind as string)) {
    throw invalidArgument(
      `${what} must be a field type (u8 … f64, u64, i64, bool, string(n), bytes(n), ref(), array(), or a struct)`,
    );
  }
}

export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** A value in an error message, briefly. */
export function show(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (value instanceof Uint8Array) return `a ${value.constructor.name} of ${value.length} bytes`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  return typeof value === 'object' && value !== null ? 'an object' : String(value);
}
