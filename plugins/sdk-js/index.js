// eventhost-plugin for JavaScript, wired to the component's host imports.
// Import this from the plugin; it only resolves inside a component built by
// componentize-js (`eventhost build`). Tests import `core.js`/`testing.js`.
import * as host from "eventhost:plugin/host@0.2.0";
import { setHost } from "./core.js";

setHost(host);

export * from "./core.js";
