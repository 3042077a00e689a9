import pg from 'pg';
import type { Pool } from 'pg';
import { PgTideError } from './errors.js';
import type { SchemaNames } from './sql.js';
import type { RowData } from './types.js';

/** Turns a column's text, as PostgreSQL prints it, into the value `pg` would return. */
type TextParser = (text: string) => unknown;

/** The columns of a logged row and how to read each (see `<schema>.shapes`). */
export interface Shape {
  readonly id: number;
  readonly columns: readonly string[];
  readonly types: readonly number[];
}

/**
 * Reads logged rows back as the application's pool would return them: record text (each
 * column as its type's output function prints it) split into fields, then each field
 * parsed by the pool's own type parser for the column's type (`types` pool option, or
 * `pg.types`, including parsers the application registered). One decoder per shape,
 * built once from the catalog's type oids.
 */
export class RowDecoder {
  private readonly shapes = new Map<number, KnownShape>();
  private readonly getTypeParser: (oid: number) => TextParser;

  constructor(
    private readonly pool: Pool,
    private readonly schema: SchemaNames,
  ) {
    const custom = (pool.options as { types?: { getTypeParser(oid: number, format: 'text'): TextParser } }).types;
    this.getTypeParser = (oid) => (custom ?? pg.types).getTypeParser(oid, 'text') as TextParser;
  }

  /** Makes sure these shapes are known (one query for all that are missing). */
  async load(ids: Iterable<number>): Promise<void> {
    const missing = [...new Set(ids)].filter((id) => !this.shapes.has(id));
    if (missing.length === 0) return;
    const { rows } = await this.pool.query<{ id: number; columns: string[]; types: string[] }>(
      `SELECT id, columns, types::int8[]::text[] AS types FROM ${this.schema.ident}.shapes WHERE id = ANY ($1::int[])`,
      [missing],
    );
    for (const row of rows) {
      const shape: Shape = { id: row.id, columns: row.columns, types: row.types.map(Number) };
      const parsers = shape.types.map((oid) => rememberLast(this.getTypeParser(oid)));
      this.shapes.set(row.id, { shape, parsers, build: rowBuilder(shape.columns) });
    }
  }

  /** The shape with this id (after `load`). */
  shape(id: number): Shape {
    const known = this.shapes.get(id);
    if (!known) throw new PgTideError('CONNECTION_LOST', `pgtide: row shape ${id} is not in the shapes table`, { shape: id });
    return known.shape;
  }

  /** A logged row, record text in its shape (see `load`). */
  decode(text: string | null, shapeId: number | null): RowData | null {
    if (text === null || shapeId === null) return null;
    const known = this.shapes.get(shapeId)!;
    return known.build(this.fields(text, known), known.parsers);
  }

  /**
   * An update's rows. Its old record holds the `changed` columns' old values (migration
   * 8; the others NULL, older rows have them all): every other column is the new row's,
   * so the old row is built from the new row's text there. Parsing the new row first
   * lets those fields reuse its parse (see `rememberLast`), never its objects.
   */
  decodeUpdate(newText: string, oldText: string, changed: readonly string[], shapeId: number): { new: RowData; old: RowData } {
    const known = this.shapes.get(shapeId)!;
    const newFields = this.fields(newText, known);
    const oldFields = this.fields(oldText, known);
    const { columns } = known.shape;
    for (let index = 0; index < columns.length; index += 1) {
      if (!changed.includes(columns[index]!)) oldFields[index] = newFields[index]!;
    }
    return { new: known.build(newFields, known.parsers), old: known.build(oldFields, known.parsers) };
  }

  private fields(text: string, known: KnownShape): Array<string | null> {
    const fields = parseRecord(text);
    const { columns } = known.shape;
    if (fields.length !== columns.length) {
      throw new PgTideError(
        'INVALID_ROW',
        `pgtide: a logged row has ${fields.length} columns, its shape ${known.shape.id} ${columns.length}; ` +
          'the table was altered without pgtide following (watch() it again after ALTER TABLE when pgtide is not installed by a superuser)',
        { shape: known.shape.id },
      );
    }
    return fields;
  }
}

interface KnownShape {
  readonly shape: Shape;
  readonly parsers: readonly FieldParser[];
  readonly build: RowBuilder;
}

/** Makes a row from a record's fields, each parsed by its column's parser. */
type RowBuilder = (fields: ReadonlyArray<string | null>, parsers: readonly FieldParser[]) => RowData;

/**
 * A row builder for these columns: one object literal, so every row of a shape gets its
 * properties in one go and shares one hidden class (a fifth of decoding, against adding
 * properties one by one). Column names enter the source only as JSON string literals;
 * `__proto__` as a computed key, so it is an own property like any other column.
 */
function rowBuilder(columns: readonly string[]): RowBuilder {
  const properties = columns.map((column, index) => {
    const name = JSON.stringify(column);
    return `${column === '__proto__' ? `[${name}]` : name}: fields[${index}] === null ? null : parsers[${index}](fields[${index}])`;
  });
  return new Function('fields', 'parsers', `return { ${properties.join(', ')} };`) as RowBuilder;
}

/** A column's parser, given the field's text. */
type FieldParser = (text: string) => unknown;

/**
 * A parser that skips parsing a field equal to the one before it: the rows of one bulk
 * statement often repeat a column (`now()`, a status). A parser is taken to be a function
 * of its text; what it returned is reused only when that cannot be shared by mistake: a
 * primitive as it is, a `Date` as a new `Date` of the same time, and anything else (a
 * `Buffer`, an array, an object) never.
 */
function rememberLast(parse: TextParser): FieldParser {
  let lastText: string | undefined;
  let lastValue: unknown;
  let lastIsDate = false;
  return (text) => {
    if (text === lastText) return lastIsDate ? new Date((lastValue as Date).getTime()) : lastValue;
    const value = parse(text);
    lastIsDate = value instanceof Date;
    const reusable = lastIsDate || value === null || (typeof value !== 'object' && typeof value !== 'function');
    lastText = reusable ? text : undefined;
    lastValue = value;
    return value;
  };
}

/**
 * Splits a record's text output, `(a,"b c",,"x""y")`, into its fields: unquoted text, a
 * quoted one with `""` and `\\` unescaped, or null for an empty unquoted field.
 */
export function parseRecord(text: string): Array<string | null> {
  const fields: Array<string | null> = [];
  const end = text.length - 1; // the closing parenthesis
  let index = 1;
  for (;;) {
    if (text.charCodeAt(index) === 34 /* " */) {
      let value = '';
      let from = index + 1;
      for (let at = from; ; at += 1) {
        const code = text.charCodeAt(at);
        if (code === 92 /* \ */) {
          value += text.slice(from, at);
          from = at + 1;
          at += 1;
        } else if (code === 34) {
          value += text.slice(from, at);
          if (text.charCodeAt(at + 1) === 34) {
            from = at + 1;
            at += 1;
          } else {
            index = at + 1;
            break;
          }
        }
      }
      fields.push(value);
    } else {
      let at = index;
      while (at < end && text.charCodeAt(at) !== 44 /* , */) at += 1;
      fields.push(at === index ? null : text.slice(index, at));
      index = at;
    }
    if (index >= end) break;
    index += 1; // the comma
  }
  return fields;
}
