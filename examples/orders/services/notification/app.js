// The notification service's component: notify.js's handler, wired to the
// host by the SDK (`sdk` links to the repository's plugins/sdk-js; a project
// made by `eventhost new` carries a copy).
import { handler } from "./sdk/index.js";
import { handleEvent } from "./notify.js";

export const handle = handler(handleEvent);
