import type { Host, Level, OutgoingRequest, RawEvent } from "./core.js";

/** A request a handler queued, with the key it was given. */
export interface Queued extends OutgoingRequest {
  key: string;
  /** `body` parsed, when it is JSON. */
  json?: unknown;
}

export interface RunResult {
  outcome: "ok" | "retry" | "reject" | "crash";
  reason: string | null;
  error?: unknown;
}

/** An in-memory host for unit tests in plain Node. */
export declare class FakeHost implements Host {
  constructor(init?: { state?: Record<string, string>; config?: Record<string, string>; refusePublish?: string | null; grants?: string[] | null });
  state: Record<string, string>;
  config: Record<string, string>;
  logs: { level: Level; message: string }[];
  published: { eventType: string; data: Record<string, unknown> }[];
  queued: Queued[];
  refusePublish: string | null;
  /** URL prefixes `sendAfterCommit` accepts; null accepts all. */
  grants: string[] | null;
  log(level: Level, message: string): void;
  publish(eventType: string, data: string): string;
  stateGet(key: string): string | undefined;
  stateSet(key: string, value: string): void;
  stateDelete(key: string): void;
  configGet(key: string): string | undefined;
  sendAfterCommit(request: OutgoingRequest): string;
  /** A Promise of the result for an async handler. */
  run(
    handle: (raw: RawEvent) => void | Promise<void>,
    eventType: string,
    data: object | string,
    options?: { id?: string; streamId?: string; timestamp?: number; attempt?: number },
  ): RunResult | Promise<RunResult>;
}
