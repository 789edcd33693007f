import { createApp } from "vue";
import ElementPlus from "element-plus";
import "element-plus/dist/index.css";
import TaskMonitor from "./TaskMonitor.vue";

createApp(TaskMonitor).use(ElementPlus).mount("#app");
