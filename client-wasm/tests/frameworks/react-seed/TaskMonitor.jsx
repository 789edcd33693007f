// The seed's React component (000-stomp-task-progress-client.md, "React 组件示例"), verbatim
// except for the import lines (the package instead of './TaskWebSocketClient'; the seed's
// undefined showSuccessToast/showErrorToast and the test server's base URL imported) and
// 'http://localhost:8081' replaced by that BASE_URL.
import React, { useEffect, useState } from 'react';
import TaskWebSocketClient from '@taskpulse/client';
import { BASE_URL, showSuccessToast, showErrorToast } from '../page.js';
function TaskMonitor() {
const [tasks, setTasks] = useState({});
const [wsClient, setWsClient] = useState(null);
useEffect(() => {
// 获取 Token(从 localStorage 或其他地方)
const token = localStorage.getItem('jwt_token');
// 创建 WebSocket 客户端
const client = new TaskWebSocketClient(BASE_URL, token);
// 监听任务更新
const unsubscribe = client.onTaskUpdate((notification) => {
console.log('任务更新:', notification);
// 更新任务状态
setTasks(prev => ({
...prev,
[notification.taskNo]: notification
}));
// 根据状态显示不同提示
if (notification.status === 'completed') {
showSuccessToast(`任务 ${notification.taskNo} 已完成!`);
} else if (notification.status === 'failed') {
showErrorToast(`任务 ${notification.taskNo} 失败: ${notification.errorMessage}`);
}
});
// 连接 WebSocket
client.connect().catch(error => {
console.error('连接失败:', error);
});
setWsClient(client);
// 清理函数
return () => {
unsubscribe();
client.disconnect();
};
}, []);
return (
<div>
<h2>任务监控</h2>
{Object.values(tasks).map(task => (
<div key={task.taskNo} className="task-card">
<h3>{task.taskNo}</h3>
<p>状态: {task.status}</p>
<p>进度: {task.progress}%</p>
<p>{task.message}</p>
{task.resultUrl && (
<a href={task.resultUrl} target="_blank" rel="noopener noreferrer">
查看结果
</a>
)}
</div>
))}
</div>
);
}
export default TaskMonitor;
