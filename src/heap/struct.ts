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
 *
 * Files: struct-fields.ts declares the field types and the value types TypeScript sees;
 * struct-accessors.ts generates and runs the accessors; this file lays schemas out, derives
 * their type ids, and allocates, checks and frees instances.
 */
import type { AddressSpace } from '../memory/address-space.js';
import { invalidArgument } from '../errors.js';
import type { HeapMemory } from './memory.js';
import {
  badValue,
  fieldAccessor,
  helpers,
  plainOf,
  subCursor,
  validate,
  type CursorState,
  type FieldInfo,
} from './struct-accessors.js';
import {
  BODY_BYTES_MAX,
  STRUCT_TAG_BYTES,
  alignUp,
  checkFieldType,
  checkName,
  type FieldType,
  type Fields,
  type StructCursor,
  type StructInit,
  type StructObject,
} from './struct-fields.js';
import { hash32, isReservedTag, readTag, registerTag, wrongTypeError } from './type-tags.js';

export {
  STRUCT_TAG_BYTES,
  array,
  bool,
  bytes,
  f32,
  f64,
  i16,
  i32,
  i64,
  i8,
  ref,
  string,
  u16,
  u32,
  u64,
  u8,
  type ArrayCursor,
  type ArrayType,
  type BytesType,
  type CursorMethods,
  type FieldType,
  type Fields,
  type Get,
  type Init,
  type Plain,
  type RefType,
  type ScalarName,
  type ScalarType,
  type StringType,
  type StructCursor,
  type StructInit,
  type StructObject,
} from './struct-fields.js';

/** A field as laid out: `offset` counts from the start of an allocated instance (its tag). */
export interface FieldLayout {
  readonly name: string;
  readonly type: FieldType;
  readonly offset: number;
  readonly byteLength: number;
}

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
    if (this.isCursor(value)) return;
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

  /** True for a cursor of this schema (or of another declaration of the very same layout). */
  private isCursor(value: unknown): value is CursorState {
    const schema = (value as { schema?: unknown } | null)?.schema;
    return (
      schema instanceof Struct && schema.typeId === this.typeId && value instanceof Object && '_base' in value
    );
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
      set(values: StructInit<F> | StructCursor<F>): this {
        if (schema.isCursor(values)) {
          // A whole struct from another cursor (this heap or another): copy its bytes.
          const bytes = Buffer.allocUnsafe(schema.byteLength);
          values.space.read(values._base, bytes);
          this.space.write(this._base, bytes);
          return this;
        }
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
