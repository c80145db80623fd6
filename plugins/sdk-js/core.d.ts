/** A log level of the WIT contract. */
export type Level = "trace" | "debug" | "info" | "warn" | "error";
export declare const LEVELS: readonly Level[];

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One event delivered to this plugin, with its JSON data parsed. */
export interface Event<Data extends object = Record<string, any>> {
  /** `event_id` of the JSON, else `_metadata.id`, else the stream id. */
  readonly id: string;
  readonly eventType: string;
  /** Entry id in the subscriber's stream. */
  readonly streamId: string;
  /** Seconds since the epoch, from the JSON; null when absent. */
  readonly timestamp: number | null;
  /** 1 on the first delivery. */
  readonly attempt: number;
  /** The JSON object as published, without `_metadata`/`_failures`:
   * parsed when first read; data that is not a JSON object throws `Reject`
   * then. */
  readonly data: Data;
  /** `data` as the host sent it (JSON text). */
  readonly raw: string;
}

/** The record the component's `handle` export receives. */
export interface RawEvent {
  id: string;
  eventType: string;
  streamId: string;
  timestamp?: number | null;
  attempt: number;
  data: string;
}

/** The record `sendAfterCommit` hands the host (`outgoing-request`). */
export interface OutgoingRequest {
  method: string;
  url: string;
  headers: [string, string][];
  body?: string;
  attempts?: number;
}

/** The raw host imports (`eventhost:plugin/host@0.2.0`), as the SDK uses them. */
export interface Host {
  log(level: Level, message: string): void;
  /** Returns the new event id; throws (`{payload: string}`) when refused. */
  publish(eventType: string, data: string): string;
  stateGet(key: string): string | undefined | null;
  stateSet(key: string, value: string): void;
  stateDelete(key: string): void;
  configGet(key: string): string | undefined | null;
  /** Returns the Idempotency-Key; throws (`{payload: string}`) when refused. */
  sendAfterCommit(request: OutgoingRequest): string;
}

/** Throw to fail with `failure::retry`: retried with backoff, then the DLQ. */
export declare class Retry extends Error {
  constructor(reason: string);
  readonly reason: string;
}

/** Throw to fail with `failure::reject`: the DLQ at once. */
export declare class Reject extends Error {
  constructor(reason: string);
  readonly reason: string;
}

/** A handler: return for ok, throw `Retry`/`Reject` to fail; anything else
 * thrown is logged and traps the component. It may be async (to `await
 * fetch(...)`): the component waits for its Promise. */
export type Handler<Data extends object = Record<string, any>> = (event: Event<Data>) => void | Promise<void>;

/** Wraps a handler as the component's export: `export const handle = handler(fn);` */
export declare function handler<Data extends object = Record<string, any>>(fn: Handler<Data>): (raw: RawEvent) => void | Promise<void>;
export declare function dispatch(fn: Handler<any>, raw: RawEvent): void | Promise<void>;
export declare function toEvent(raw: RawEvent): Event;
/** Installs a host (tests); returns the previous one. */
export declare function setHost(host: Host | null): Host | null;

export declare const state: {
  get(key: string): string | null;
  set(key: string, value: string): void;
  delete(key: string): void;
  getJson<T = Json>(key: string): T | null;
  setJson(key: string, value: unknown): void;
  /** Counter stored as a decimal string, absent = 0; returns the new value. */
  increment(key: string, by?: number): number;
};

export declare const config: {
  get(key: string): string | null;
  get<T>(key: string, fallback: T): string | T;
  getInt(key: string, fallback: number): number;
  getBool(key: string, fallback: boolean): boolean;
};

export declare const log: { readonly [L in Level]: (message: string) => void };

/** Publishes an event and returns its id; refused or unserialisable: `Reject`. */
export declare function publish(eventType: string, data: Record<string, unknown>): string;

/** The host refused to queue a request (`why`: `HttpRequestDenied: ...`);
 * a `Reject`, so uncaught it dead-letters the event. */
export declare class SendRefused extends Reject {
  constructor(reason: string, why: string);
  readonly why: string;
}

export type Headers = Record<string, string> | [string, string][];

/** Queues a request sent only once the event is committed; returns its
 * Idempotency-Key. Refused (no grant names the URL): `SendRefused`. */
export declare function sendAfterCommit(request: {
  method?: string;
  url: string;
  headers?: Headers;
  body?: string | null;
  attempts?: number | null;
}): string;

/** Queues a JSON POST sent only once the event is committed; returns its key. */
export declare function postJsonAfterCommit(
  url: string,
  value: unknown,
  options?: { headers?: Headers; attempts?: number | null },
): string;
